"""es_workers' own Store on Redis against the `eventsourcing` library on PostgreSQL, at equal
durability, in one run: one table of ratios per number of concurrent writers.

    pip install -r bench/requirements-side-by-side.txt    # the peer, pinned
    python bench/side_by_side.py [--writers 1 4 16] [--count 600] [--rounds 3]
        [--redis-url redis://...] [--postgres 127.0.0.1:5432]

es_workers: `stream.write(...)` on a `Store` over a `RedisStorage` (log included), on a Redis
of the bench's own with `appendonly yes` and `appendfsync always` (each reply after the
fsync of its write); `--redis-url` uses another Redis instead (keys under a prefix of the
bench's, deleted after; check its persistence, printed with the table). The peer: an
`eventsourcing` application (`eventsourcing.postgres`, the application recorder with its
notification log) on the PostgreSQL at --postgres (user postgres, trust auth; fsync and
synchronous_commit as the server has them, printed; a database of the bench's own, dropped
after). Each figure is what a user of each library writes:

  single appends     one event more on an entity the writer holds: `stream.write(e)` on an
                     open Stream / `account.deposit(...)` then `app.save(account)`
  entity creation    a new entity with its first event: `store.open(...).write(e)` /
                     `app.save(Account(...))`
  10-event writes    ten events in one write: `stream.write(*ten)` / ten calls then one
                     `app.save` (writes/s; each write holds 10 events)

`--writers N`: N threads write at once, each its own entities, over connections of their own
(redis-py's pool; the peer's pool sized to N), as a web app's request handlers do. Both
servers may then commit concurrent writes with one fsync (Redis fsyncs once per event-loop
round for every client's writes, before replying to any; PostgreSQL flushes its WAL for all
commits waiting): every acknowledged write is still durable. Rounds interleave the two
sides (a busy machine slows both alike); each figure is the best of --rounds.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
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

from es_workers import Content, RedisStorage, Store  # noqa: E402

ENTITY = "account"
NOTE = "x" * 100  # both sides store the same fields: ~150 bytes of JSON per event
MEASURES = ("single appends", "entity creation", "10-event writes")


class Opened(Content):
    name: str


class Deposited(Content):
    amount: int
    note: str


class Account(Aggregate):
    @event("Opened")
    def __init__(self, name: str) -> None:
        self.name = name
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int, note: str) -> None:
        self.balance += amount


class Accounts(Application):  # type: ignore[type-arg]
    pass


class Ours:
    """es_workers' Store: each step a `stream.write`."""

    def __init__(self, url: str, prefix: str, writers: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.store = Store(RedisStorage(self.client, prefix=prefix), events={
            ENTITY: [Opened, Deposited]})

    def single(self, _: int) -> Step:
        stream = self.store.open(ENTITY, uuid.uuid4().hex)
        stream.write(Opened(name="a"))
        return lambda: stream.write(Deposited(amount=1, note=NOTE))

    def create(self, _: int) -> Step:
        return lambda: self.store.open(ENTITY, uuid.uuid4().hex).write(Opened(name="a"))

    def ten(self, _: int) -> Step:
        stream = self.store.open(ENTITY, uuid.uuid4().hex)
        stream.write(Opened(name="a"))

        def write() -> None:
            stream.write(*(Deposited(amount=n, note=NOTE) for n in range(10)))
        return write

    def close(self) -> None:
        self.client.close()


class Theirs:
    """eventsourcing on PostgreSQL: each step an `app.save`."""

    def __init__(self, postgres: Postgres, writers: int) -> None:
        # The password is not checked (trust auth); eventsourcing requires the setting.
        self.app = Accounts(env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_HOST": postgres.host,
            "POSTGRES_PORT": postgres.port, "POSTGRES_DBNAME": postgres.dbname,
            "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "",
            "POSTGRES_POOL_SIZE": str(max(writers, 5)), "POSTGRES_MAX_OVERFLOW": "0"})

    def single(self, _: int) -> Step:
        account = Account("a")
        self.app.save(account)

        def save() -> None:
            account.deposit(1, NOTE)
            self.app.save(account)
        return save

    def create(self, _: int) -> Step:
        return lambda: self.app.save(Account("a"))

    def ten(self, _: int) -> Step:
        account = Account("a")
        self.app.save(account)

        def save() -> None:
            for n in range(10):
                account.deposit(n, NOTE)
            self.app.save(account)
        return save

    def close(self) -> None:
        self.app.close()


def steps(side: Ours | Theirs) -> dict[str, Callable[[int], Step]]:
    return dict(zip(MEASURES, (side.single, side.create, side.ten), strict=True))


def measure(url: str, prefix: str, postgres: Postgres, writers: int, count: int,
            rounds: int) -> dict[str, tuple[float, float]]:
    """The best rate of each side per measure, rounds interleaving the sides."""
    ours, theirs = Ours(url, prefix, writers), Theirs(postgres, writers)
    best: dict[str, list[float]] = {name: [0.0, 0.0] for name in MEASURES}
    try:
        for _ in range(rounds):
            for name in MEASURES:
                for index, side in enumerate((ours, theirs)):
                    found = rate(writers, count, steps(side)[name])
                    best[name][index] = max(best[name][index], found)
    finally:
        ours.close()
        theirs.close()
    return {name: (pair[0], pair[1]) for name, pair in best.items()}


def run(options: argparse.Namespace) -> Iterator[tuple[int, dict[str, tuple[float, float]]]]:
    prefix = f"bench-sbs-{uuid.uuid4().hex[:8]}"
    with redis_server(options.redis_url) as url, postgres_database(options.postgres) as pg:
        redis_durability, pg_durability = durability(url, pg)
        print(f"Redis: {redis_durability}; PostgreSQL: {pg_durability}")
        print(f"{options.count} steps per figure, best of {options.rounds} interleaved rounds;"
              f" {load()}")
        try:
            for writers in options.writers:
                yield writers, measure(url, prefix, pg, writers, options.count, options.rounds)
        finally:
            delete_prefix(url, prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--count", type=int, default=600, help="steps per figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", help="an existing Redis (default: start one)")
    parser.add_argument("--postgres", default="127.0.0.1:5432")
    options = parser.parse_args()
    if min(options.writers) < 1 or options.count < 1 or options.rounds < 1:
        parser.error("--writers, --count and --rounds must be at least 1")
    lowest = float("inf")
    for writers, figures in run(options):
        rows = [(f"{name} (writes/s)", *figures[name]) for name in MEASURES]
        print_ratios(f"\n{writers} writer{'s' if writers > 1 else ''} ({load()}):", rows,
                     ("es_workers (Redis)", "eventsourcing (PG)"))
        lowest = min([lowest, *(ours / theirs for ours, theirs in figures.values())])
    print("\nratio: es_workers / eventsourcing; goal >= 3 on each (issue 25)")
    return 0 if lowest >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
