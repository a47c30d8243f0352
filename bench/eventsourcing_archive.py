"""The eventsourcing recorders with an archive: the archiver's throughput, and reads of an
aggregate through the archive against reads from Redis only.

    python bench/eventsourcing_archive.py --aggregates 200 --events 100 --keep 10

Starts a Redis server of its own (unless --redis-url) and a database of its own on the
PostgreSQL of --postgres-url (dropped at the end), as bench/archive.py does.

1. Archiver: `--aggregates` aggregates of `--events` events each (10 per write, ~60-byte
   states) through `RedisApplicationRecorder`, then one `RecorderArchiver` pass (timed)
   keeping `--keep` per aggregate: events/s moved to PostgreSQL and out of Redis, and Redis
   `used_memory` after it against the same aggregates written with `--keep` events only.
2. Reads: one aggregate of 1,000 events, `select_events` whole, and
   `select_notifications` of its 1,000 in pages of 100, from Redis only, with every event
   archived but the newest, and with 900 archived + 100 hot; interleaved runs, medians,
   ratios to Redis only.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

import redis
from archive import own_database, own_redis  # bench/archive.py
from eventsourcing.persistence import StoredEvent

from es_workers.postgres import PostgresRecordedArchive
from es_workers.redis.recorder_archiver import RecorderArchiver
from es_workers.redis.recorder_keys import ApplicationKeys
from es_workers.redis.recorders import RedisApplicationRecorder

APP = "Bench"


def write(recorder: RedisApplicationRecorder, originator: uuid.UUID, count: int) -> None:
    for first in range(1, count + 1, 10):
        recorder.insert_events([StoredEvent(originator, version, "bench:Deposited",
                                            b"x" * 60)
                                for version in range(first, min(first + 10, count + 1))])


def recorder_on(client: redis.Redis, archive_url: str | None) -> tuple[
        RedisApplicationRecorder, str, PostgresRecordedArchive | None]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    archive = None
    if archive_url is not None:
        archive = PostgresRecordedArchive(archive_url, prefix=prefix)
        archive.init()
    return (RedisApplicationRecorder(client, ApplicationKeys(prefix, APP), archive=archive),
            prefix, archive)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def archiver(args: argparse.Namespace, client: redis.Redis, archive_url: str) -> None:
    recorder, prefix, archive = recorder_on(client, archive_url)
    assert archive is not None
    empty = used_memory(client)
    for _ in range(args.aggregates):
        write(recorder, uuid.uuid4(), args.events)
    written = used_memory(client) - empty
    started = time.perf_counter()
    done = RecorderArchiver(client, prefix, archive, keep=args.keep, batch=args.batch,
                            applications=[APP]).run_once()
    elapsed = time.perf_counter() - started
    archived = used_memory(client) - empty
    # The same aggregates holding only the hot window, never archived: what it costs.
    hot, _, _ = recorder_on(client, None)
    before_hot = used_memory(client)
    for _ in range(args.aggregates):
        write(hot, uuid.uuid4(), args.keep)
    window = used_memory(client) - before_hot
    print(f"1. Archiver: {done.events:,} events of {args.aggregates} aggregates in "
          f"{elapsed:.2f} s: {done.events / elapsed:,.0f} events/s")
    print(f"   Redis used_memory: {written / 1e6:.1f} MB written, {archived / 1e6:.1f} MB "
          f"after the pass (the archiver's own keys included), {window / 1e6:.1f} MB for "
          f"{args.keep} events per aggregate written alone: {archived / window:.2f}x")


def reads(args: argparse.Namespace, client: redis.Redis, archive_url: str) -> None:
    reading: dict[tuple[str, str], Callable[[], int]] = {}
    for name, keep in (("Redis only", None), ("archived but the newest", 1),
                       ("900 archived + 100 hot", 100)):
        recorder, prefix, archive = recorder_on(client, None if keep is None else archive_url)
        originator = uuid.uuid4()
        write(recorder, originator, 1000)
        if archive is not None and keep is not None:
            RecorderArchiver(client, prefix, archive, keep=keep,
                             applications=[APP]).run_once()
        reading[name, "select_events"] = (
            lambda recorder=recorder, originator=originator:  # type: ignore[misc]
            len(recorder.select_events(originator)))
        reading[name, "select_notifications"] = (
            lambda recorder=recorder:  # type: ignore[misc]
            sum(len(recorder.select_notifications(start, 100))
                for start in range(1, 1001, 100)))
    times: dict[tuple[str, str], list[float]] = {key: [] for key in reading}
    for _ in range(args.read_runs):
        for key, read in reading.items():
            started = time.perf_counter()
            count = read()
            times[key].append(time.perf_counter() - started)
            assert count == 1000, (key, count)
    print(f"\n2. Reading a 1,000-event aggregate whole (select_events) and its 1,000 "
          f"notifications in pages of 100 (median of {args.read_runs} interleaved runs)")
    print("| stored | select_events ms | vs Redis only | select_notifications ms | "
          "vs Redis only |")
    print("|---|---|---|---|---|")
    for name in ("Redis only", "archived but the newest", "900 archived + 100 hot"):
        cells = []
        for what in ("select_events", "select_notifications"):
            median = statistics.median(times[name, what])
            base = statistics.median(times["Redis only", what])
            cells += [f"{median * 1000:.2f}", f"{median / base:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="a Redis of the bench's own (default: started)")
    parser.add_argument("--postgres-url",
                        default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL where the bench may create a database")
    parser.add_argument("--aggregates", type=int, default=200)
    parser.add_argument("--events", type=int, default=100, help="events per aggregate")
    parser.add_argument("--keep", type=int, default=10, help="events kept hot per aggregate")
    parser.add_argument("--batch", type=int, default=5000, help="events per transaction")
    parser.add_argument("--read-runs", type=int, default=21)
    args = parser.parse_args()
    with own_database(args.postgres_url) as archive_url:
        if args.redis_url:
            client = redis.Redis.from_url(args.redis_url)
            archiver(args, client, archive_url)
            reads(args, client, archive_url)
            return 0
        with own_redis(None) as url:
            client = redis.Redis.from_url(url)
            archiver(args, client, archive_url)
            reads(args, client, archive_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
