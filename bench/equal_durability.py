"""What the side-by-side benches share (bench/side_by_side.py, bench/eventsourcing_side_by_side.py):
a Redis of the bench's own at `appendfsync always`, a PostgreSQL database of its own, the
servers' durability printed beside the figures, concurrent writers, and the ratio table.

Not a bench itself: the scripts in bench/ import it (the script's folder is on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
import servers  # tests/servers.py: the callers put tests/ on sys.path
from servers import RedisServer, running

BENCH_OFFSET = 90  # in the claimed port range, past the offsets tests/servers.py uses

Step = Callable[[], None]


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """`url`, or a redis-server of our own with `appendonly yes`, `appendfsync always`
    (an fsync before each reply, as PostgreSQL's commit) while the block runs."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer("bench", servers.port_base() + BENCH_OFFSET, Path(directory),
                             ["appendonly yes", "appendfsync always"])
        with running(server):
            server.start()
            yield server.url


@dataclass(frozen=True)
class Postgres:
    """A database of the bench's own on the PostgreSQL at host:port (user postgres)."""

    host: str
    port: str
    dbname: str

    @property
    def admin(self) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname=postgres"


@contextlib.contextmanager
def postgres_database(address: str) -> Iterator[Postgres]:
    """A new database on the PostgreSQL at `address` (host[:port], user postgres, trust
    auth), dropped after the block."""
    host, _, port = address.partition(":")
    database = Postgres(host, port or "5432", f"es_bench_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(database.admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database.dbname}"')
    try:
        yield database
    finally:
        with psycopg.connect(database.admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database.dbname}" WITH (FORCE)')


def durability(url: str, postgres: Postgres) -> tuple[str, str]:
    """How durable each server's commits are, as they say it themselves."""
    with redis.Redis.from_url(url) as client:
        try:
            found = client.config_get("append*")
            on_redis = (f"appendonly {found.get('appendonly')}, "
                        f"appendfsync {found.get('appendfsync')}")
        except redis.ResponseError as error:
            on_redis = f"unknown ({error})"
    with psycopg.connect(postgres.admin) as connection:
        fsync = connection.execute("SHOW fsync").fetchone()
        sync = connection.execute("SHOW synchronous_commit").fetchone()
    return on_redis, f"fsync {fsync and fsync[0]}, synchronous_commit {sync and sync[0]}"


def delete_prefix(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])


def rate(writers: int, count: int, prepare: Callable[[int], Step]) -> float:
    """Steps/s of `writers` threads running `count` steps in all, started together: writer i
    runs `prepare(i)` (untimed: its own aggregate or stream, say), then the step it returns
    `count // writers` times. Each thread's commands go over a connection of its own (the
    clients' pools), so the servers may commit concurrent writes together (group commit)."""
    share = max(count // writers, 1)
    ready = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            step = prepare(index)
        except BaseException as error:
            errors.append(error)
            ready.abort()
            raise
        ready.wait()
        try:
            for _ in range(share):
                step()
        except BaseException as error:
            errors.append(error)
            raise

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(writers)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return share * writers / elapsed


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def print_ratios(title: str, rows: Sequence[tuple[str, float, float]],
                 sides: tuple[str, str]) -> None:
    """One table: each row's two figures and their ratio (first / second)."""
    print(title)
    print(f"  {'':34} {sides[0]:>20} {sides[1]:>20} {'ratio':>7}")
    for name, ours, theirs in rows:
        print(f"  {name:34} {ours:20,.1f} {theirs:20,.1f} {ours / theirs:7.2f}")
