"""The archive in PostgreSQL: archiver throughput, reads through the archive against reads from
Redis, and Redis memory against events written with a hot window.

    python bench/archive.py --entities 2000 --events 200 --hot 100 --steps 8 [--plot PNG]

Starts a Redis server of its own (unless --redis-url), so `used_memory` counts this bench's
keys only, and a database of its own on the PostgreSQL of --postgres-url (dropped at the
end). Prints tables; `--plot memory.png` also draws Redis memory against events written
(matplotlib: `pip install -c requirements-dev.lock -e '.[bench]'`).

A partly trimmed stream keeps its first node (`stream-node-max-bytes`, 4 KB by default)
until every entry in it is removed: `--node-bytes 1024` measures a smaller node.

1. Memory: each of `--steps` steps writes `events / steps` events to every entity (10 per
   write, ~60-byte payloads), then runs one archiver pass (`RedisArchiver.run_once`, timed:
   the throughput) and a scavenge, empties the outbox and trims the log as a publisher would
   (`ES_LOG_KEEP` = entities x hot), and reads Redis `used_memory`. The hot window's own cost
   is the memory once every entity holds `--hot` events, before anything is archived.
2. Reads: one entity of 1,000 events read whole (`store.read`) from Redis only, fully
   archived, and 900 archived + 100 hot; interleaved runs, medians, ratios to Redis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis

from es_workers import Content, HotWindow, RedisStorage, Store
from es_workers.postgres import PostgresArchive


class Deposited(Content):
    amount: int
    note: str


EVENTS = {"account": [Deposited]}


@contextmanager
def own_redis(node_bytes: int | None) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="es-bench-archive-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", folder,
                               *(["--stream-node-max-bytes", str(node_bytes)]
                                 if node_bytes else [])],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def own_database(url: str) -> Iterator[str]:
    name = f"es_archive_bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write(store: Store, entity_id: str, after: int, count: int) -> None:
    written = after
    while written < after + count:
        with store.open_from("account", entity_id, written) as stream:
            list(stream.all())
            size = min(10, after + count - written)
            stream.write(*(Deposited(amount=written + i, note="x" * 40) for i in range(size)))
            written += size


def settle(client: redis.Redis, storage: RedisStorage, args: argparse.Namespace) -> None:
    """What a running app's publisher does meanwhile: the outbox relayed (emptied) and the
    log trimmed to `ES_LOG_KEEP` = entities x hot window (else they grow with every write)."""
    for partition in range(storage.partitions):
        client.xtrim(storage.keys.outbox(partition), maxlen=0)
    storage.trim_logs(args.entities * args.hot)


def plot(path: str, curve: list[tuple[int, int]], hot_cost: int | None,
         args: argparse.Namespace) -> None:
    """Redis used_memory (MB) against events written, with the hot window's cost and the
    budget (+15%) as lines."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    axes.plot([w for w, _ in curve], [m / 1e6 for _, m in curve], marker="o",
              label="Redis used_memory, after each step's archiving and scavenge")
    if hot_cost:
        axes.axhline(hot_cost / 1e6, color="grey", linestyle="--",
                     label=f"the hot window's cost ({args.hot} events x {args.entities:,})")
        axes.axhline(hot_cost * 1.15 / 1e6, color="red", linestyle=":", label="+15%")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("events written")
    axes.set_ylabel("MB")
    axes.set_title(f"Redis memory with an archive\n{args.entities:,} entities, hot window "
                   f"{args.hot} events, stream-node-max-bytes {args.node_bytes or 4096}",
                   fontsize=11)
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    print(f"plot: {path}")


def memory(args: argparse.Namespace, client: redis.Redis, archive_url: str) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    archive = PostgresArchive(archive_url, prefix=prefix)
    archive.init()
    storage = RedisStorage(client, prefix=prefix, archive=archive)
    store = Store(storage, events=EVENTS)
    archiver = storage.archiver({}, HotWindow(events=args.hot), batch=args.batch)
    per_step = args.events // args.steps
    hot_cost: int | None = None
    archived_total, archiving_s = 0, 0.0
    print(f"\n1. Redis memory, {args.entities} entities, hot window {args.hot} events")
    print("| events written | Redis used_memory | vs the hot window's cost | archived this step "
          "| archiver events/s |")
    print("|---|---|---|---|---|")
    written = 0
    curve: list[tuple[int, int]] = []  # (events written, used_memory) after each step
    for step in range(args.steps):
        for n in range(args.entities):
            write(store, f"a{n}", step * per_step, per_step)
        written += per_step * args.entities
        if hot_cost is None and written >= args.entities * args.hot:
            settle(client, storage, args)
            hot_cost = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        done = archiver.run_once()
        took = time.perf_counter() - started
        archived_total, archiving_s = archived_total + done.events, archiving_s + took
        store.scavenge()
        settle(client, storage, args)
        used = int(client.info("memory")["used_memory"])
        curve.append((written, used))
        ratio = f"{used / hot_cost:.2f}x" if hot_cost else "-"
        rate = f"{done.events / took:,.0f}" if done.events else "-"
        print(f"| {written:,} | {used / 1e6:.1f} MB | {ratio} | {done.events:,} | {rate} |")
    print(f"\narchiver: {archived_total:,} events in {archiving_s:.1f} s = "
          f"{archived_total / archiving_s:,.0f} events/s (reading Redis, COPY + INSERT, marks)")
    checked = storage.verify_archive("account")
    print(f"verify: {checked.entities} entities, {checked.found:,} of {checked.archived:,} "
          f"archived events found, {checked.compared:,} compared with Redis: "
          f"{'ok' if checked.ok else 'DIFFERS'}")
    total = sum(1 for n in range(args.entities) for _ in store.read("account", f"a{n}"))
    print(f"every event readable at the end: {total:,} of {written:,}")
    archive.close()
    if args.plot:
        plot(args.plot, curve, hot_cost, args)


def reads(args: argparse.Namespace, client: redis.Redis, archive_url: str) -> None:
    stores: dict[str, Store] = {}
    for name, window in (("Redis only", None), ("fully archived", 0),
                         ("900 archived + 100 hot", 100)):
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        archive = None
        if window is not None:
            archive = PostgresArchive(archive_url, prefix=prefix)
            archive.init()
        storage = RedisStorage(client, prefix=prefix, archive=archive)
        store = Store(storage, events=EVENTS)
        write(store, "e1", 0, 1000)
        if window is not None:
            storage.archiver({}, HotWindow(events=window)).run_once()
            store.scavenge()
        stores[name] = store
    times: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(args.read_runs):
        for name, store in stores.items():
            started = time.perf_counter()
            count = sum(1 for _ in store.read("account", "e1"))
            times[name].append(time.perf_counter() - started)
            assert count == 1000, (name, count)
    base = statistics.median(times["Redis only"])
    print(f"\n2. Reading a 1,000-event entity whole (median of {args.read_runs} interleaved "
          "runs)")
    print("| stored | ms | vs Redis only |")
    print("|---|---|---|")
    for name, found in times.items():
        median = statistics.median(found)
        print(f"| {name} | {median * 1000:.2f} | {median / base:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="a Redis of the bench's own (default: started)")
    parser.add_argument("--postgres-url",
                        default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL where the bench may create a database")
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--events", type=int, default=200, help="events per entity")
    parser.add_argument("--hot", type=int, default=100, help="events kept hot per entity")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=5000, help="events per transaction")
    parser.add_argument("--read-runs", type=int, default=21)
    parser.add_argument("--node-bytes", type=int,
                        help="the own Redis' stream-node-max-bytes (default: Redis', 4096)")
    parser.add_argument("--plot", metavar="PNG",
                        help="also draw Redis memory against events written to this file "
                        "(needs matplotlib: the bench extra)")
    args = parser.parse_args()
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install -c requirements-dev.lock "
                         "-e '.[bench]'")
    with own_database(args.postgres_url) as archive_url:
        if args.redis_url:
            client = redis.Redis.from_url(args.redis_url)
            memory(args, client, archive_url)
            reads(args, client, archive_url)
            return 0
        with own_redis(args.node_bytes) as url:
            client = redis.Redis.from_url(url)
            memory(args, client, archive_url)
            reads(args, client, archive_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
