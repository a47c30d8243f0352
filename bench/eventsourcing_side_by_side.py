"""The same small eventsourcing application on es_workers.eventsourcing (Redis) and on
eventsourcing's own PostgreSQL module, in one run: saves/s and repository.get time.

    python bench/eventsourcing_side_by_side.py [--saves 1000] [--events 1000] [--rounds 3]
        [--writers 1 4 16] [--redis-url redis://...] [--postgres 127.0.0.1:5432]

Needs the eventsourcing extra and psycopg (`pip install -r bench/requirements-side-by-side.txt`);
PostgreSQL with user postgres and trust auth (a database of its own is created and dropped).
Redis: by default its own redis-server with `appendfsync always` (like PostgreSQL's fsync on
each commit), in a temporary directory, on a port of the test port range it claims
(tests/servers.py: ES_TEST_PORT_BASE, else the first free range); or --redis-url, where it
writes under a prefix of its own, deleted after. Servers and helpers: bench/equal_durability.py.
Measured, best of --rounds (the backends interleave, so a busy machine slows both alike):

  saves/s        creating an aggregate: one save of one event, one after another
  updates/s      one more event on each of those aggregates (repository.get, then save)
  get N events   repository.get of an aggregate of --events events (median of 20 gets;
                 one writer only)

`--writers N` (several: one table each): saves and updates from N threads at once, each its
own aggregates, over connections of their own (the peer's pool sized to N), as a web app's
request handlers; both servers may commit concurrent writes with one fsync (group commit),
every acknowledged save still durable.

It prints the server's durability beside the figures (Redis appendfsync, PostgreSQL
fsync/synchronous_commit): compare like with like, and say the load average when quoting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from equal_durability import (  # noqa: E402
    Postgres,
    Step,
    delete_prefix,
    durability,
    load,
    postgres_database,
    print_ratios,
    rate,
    redis_server,
)


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


def measure(app: Counters, saves: int, events: int, writers: int) -> dict[str, float]:
    per_writer = max(saves // writers, 1)
    created: list[list[Any]] = [[] for _ in range(writers)]

    def creating(index: int) -> Step:
        return lambda: created[index].append(app.create("c"))

    def updating(index: int) -> Step:
        pending = iter(created[index])
        return lambda: app.increment(next(pending))

    figures = {"saves/s": rate(writers, per_writer * writers, creating),
               "updates/s": rate(writers, per_writer * writers, updating)}
    if writers == 1:
        figures[f"get {events} events (ms)"] = get_time(app, events)
    return figures


def get_time(app: Counters, events: int) -> float:
    big = Counter("big")
    for _ in range(events - 1):
        big.increment(1)
    app.save(big)  # one write of every event
    gets = []
    for _ in range(20):
        started = time.perf_counter()
        app.repository.get(big.id)
        gets.append(time.perf_counter() - started)
    return statistics.median(gets) * 1000


def redis_app(url: str, prefix: str) -> Counters:
    return Counters(env={"PERSISTENCE_MODULE": "es_workers.eventsourcing",
                         "ES_REDIS_URL": url, "ES_PREFIX": prefix})


def postgres_app(postgres: Postgres, writers: int) -> Counters:
    # The password is not checked (trust auth); eventsourcing requires the setting.
    return Counters(env={"PERSISTENCE_MODULE": "eventsourcing.postgres",
                         "POSTGRES_HOST": postgres.host, "POSTGRES_PORT": postgres.port,
                         "POSTGRES_DBNAME": postgres.dbname, "POSTGRES_USER": "postgres",
                         "POSTGRES_PASSWORD": "", "POSTGRES_POOL_SIZE": str(max(writers, 5)),
                         "POSTGRES_MAX_OVERFLOW": "0"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, nargs="+", default=[1])
    parser.add_argument("--redis-url", help="an existing Redis (default: start one)")
    parser.add_argument("--postgres", default="127.0.0.1:5432")
    options = parser.parse_args()
    if min(options.writers) < 1 or options.saves < 1 or options.rounds < 1:
        parser.error("--writers, --saves and --rounds must be at least 1")
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    with redis_server(options.redis_url) as url, postgres_database(options.postgres) as pg:
        redis_durability, pg_durability = durability(url, pg)
        print(f"Redis: {redis_durability}; PostgreSQL: {pg_durability}; {load()}")
        try:
            for writers in options.writers:
                best = compare(options, url, prefix, pg, writers)
                rows = [(key, best["redis"][key], best["postgres"][key]) for key in best["redis"]]
                print_ratios(f"\n{writers} writer{'s' if writers > 1 else ''} ({load()}):", rows,
                             ("es_workers (Redis)", "eventsourcing (PG)"))
        finally:
            delete_prefix(url, prefix)
    print("ratio: Redis / PostgreSQL (above 1: more saves/s, or a slower get)")


def compare(options: argparse.Namespace, url: str, prefix: str, postgres: Postgres,
            writers: int) -> dict[str, dict[str, float]]:
    """The best figures of each backend over the rounds."""
    best: dict[str, dict[str, float]] = {"redis": {}, "postgres": {}}
    for _ in range(options.rounds):
        for name, make in (("redis", lambda: redis_app(url, prefix)),
                           ("postgres", lambda: postgres_app(postgres, writers))):
            app = make()
            try:
                figures = measure(app, options.saves, options.events, writers)
            finally:
                app.close()
            for key, value in figures.items():
                keep = min if key.endswith("(ms)") else max
                best[name][key] = keep(best[name].get(key, value), value)
    return best


if __name__ == "__main__":
    main()
