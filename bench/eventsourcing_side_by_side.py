"""The same small eventsourcing application on es_workers.eventsourcing (Redis) and on
eventsourcing's own PostgreSQL module, in one run: saves/s and repository.get time.

    python bench/eventsourcing_side_by_side.py [--saves 1000] [--events 1000] [--rounds 3]
        [--redis-url redis://...] [--postgres 127.0.0.1:5432]

Needs the eventsourcing extra and psycopg (`pip install 'psycopg[binary,pool]'`); PostgreSQL
with user postgres and trust auth (a database of its own is created and dropped). Redis: by
default its own redis-server with `appendfsync always` (like PostgreSQL's fsync on each
commit), in a temporary directory, on a port of the test port range it claims
(tests/servers.py: ES_TEST_PORT_BASE, else the first free range); or --redis-url, where it writes
under a prefix of its own, deleted after. Measured, best of --rounds (the backends
interleave, so a busy machine slows both alike):

  saves/s        creating an aggregate: one save of one event, one after another
  updates/s      one more event on each of those aggregates (repository.get, then save)
  get N events   repository.get of an aggregate of --events events (median of 20 gets)

It prints the server's durability beside the figures (Redis appendfsync, PostgreSQL
fsync/synchronous_commit): compare like with like, and say the load average when quoting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import servers  # noqa: E402
from servers import RedisServer, running  # noqa: E402

BENCH_OFFSET = 90  # in the claimed port range, past the offsets tests/servers.py uses


class Counter(Aggregate):
    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    @event("Incremented")
    def increment(self, by: int) -> None:
        self.count += by


class Counters(Application):  # type: ignore[type-arg]
    def create(self, name: str) -> Any:
        counter = Counter(name)
        self.save(counter)
        return counter.id

    def increment(self, counter_id: Any) -> None:
        counter: Counter = self.repository.get(counter_id)
        counter.increment(1)
        self.save(counter)


def rate(count: int, work: Callable[[], None]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        work()
    return count / (time.perf_counter() - started)


def measure(app: Counters, saves: int, events: int) -> dict[str, float]:
    ids: list[Any] = []
    created = rate(saves, lambda: ids.append(app.create("c")))
    pending = iter(ids)
    updated = rate(saves, lambda: app.increment(next(pending)))
    big = Counter("big")
    for _ in range(events - 1):
        big.increment(1)
    app.save(big)  # one write of every event
    gets = []
    for _ in range(20):
        started = time.perf_counter()
        app.repository.get(big.id)
        gets.append(time.perf_counter() - started)
    return {"saves/s": created, "updates/s": updated,
            f"get {events} events (ms)": statistics.median(gets) * 1000}


def redis_app(url: str, prefix: str) -> Counters:
    return Counters(env={"PERSISTENCE_MODULE": "es_workers.eventsourcing",
                         "ES_REDIS_URL": url, "ES_PREFIX": prefix})


def postgres_app(host: str, port: str, dbname: str) -> Counters:
    # The password is not checked (trust auth); eventsourcing requires the setting.
    return Counters(env={"PERSISTENCE_MODULE": "eventsourcing.postgres",
                         "POSTGRES_HOST": host, "POSTGRES_PORT": port,
                         "POSTGRES_DBNAME": dbname, "POSTGRES_USER": "postgres",
                         "POSTGRES_PASSWORD": ""})


def durability(url: str, conninfo: str) -> tuple[str, str]:
    with redis.Redis.from_url(url) as client:
        try:
            found = client.config_get("append*")
            on_redis = (f"appendonly {found.get('appendonly')}, "
                        f"appendfsync {found.get('appendfsync')}")
        except redis.ResponseError as error:
            on_redis = f"unknown ({error})"
    with psycopg.connect(conninfo) as connection:
        fsync = connection.execute("SHOW fsync").fetchone()
        sync = connection.execute("SHOW synchronous_commit").fetchone()
    return on_redis, f"fsync {fsync and fsync[0]}, synchronous_commit {sync and sync[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", help="an existing Redis (default: start one)")
    parser.add_argument("--postgres", default="127.0.0.1:5432")
    options = parser.parse_args()
    host, _, port = options.postgres.partition(":")
    admin = f"host={host} port={port or 5432} user=postgres dbname=postgres"
    run = uuid.uuid4().hex[:10]
    prefix, dbname = f"bench-{run}", f"es_bench_{run}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{dbname}"')
    try:
        with redis_server(options.redis_url) as url:
            best = compare(options, url, prefix, (host, port or "5432", dbname))
            report(best, durability(url, admin))
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """`url`, or a redis-server of our own with `appendfsync always` while the block runs."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer("bench", servers.port_base() + BENCH_OFFSET, Path(directory),
                             ["appendonly yes", "appendfsync always"])
        with running(server):
            server.start()
            yield server.url


def compare(options: argparse.Namespace, url: str, prefix: str,
            postgres: tuple[str, str, str]) -> dict[str, dict[str, float]]:
    """The best figures of each backend over the rounds; the Redis keys deleted after."""
    try:
        best: dict[str, dict[str, float]] = {"redis": {}, "postgres": {}}
        for _ in range(options.rounds):
            for name, make in (("redis", lambda: redis_app(url, prefix)),
                               ("postgres", lambda: postgres_app(*postgres))):
                app = make()
                try:
                    figures = measure(app, options.saves, options.events)
                finally:
                    app.close()
                for key, value in figures.items():
                    keep = min if key.endswith("(ms)") else max
                    best[name][key] = keep(best[name].get(key, value), value)
        return best
    finally:
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])


def report(best: dict[str, dict[str, float]], servers: tuple[str, str]) -> None:
    print(f"Redis: {servers[0]}; PostgreSQL: {servers[1]}; load {os.getloadavg()[0]:.2f}")
    print(f"{'':24} {'es_workers (Redis)':>20} {'eventsourcing (PG)':>20} {'ratio':>8}")
    for key in best["redis"]:
        ours, theirs = best["redis"][key], best["postgres"][key]
        print(f"{key:24} {ours:20.1f} {theirs:20.1f} {ours / theirs:8.2f}")
    print("ratio: Redis / PostgreSQL (above 1: more saves/s, or a slower get)")


if __name__ == "__main__":
    main()
