"""What the dashboard's sampler costs Redis: one overview (the reads of `es-workers status`
plus entity and event counts) per sample, at a few store sizes.

    python bench/dashboard_sampler.py [--redis-url URL] [--entities 1000 10000]
                                      [--subscribers 2] [--samples 20] [--every 3]

For each size it writes that many entities (one event each, every subscriber's checkpoint
at the head: the largest checkpoint hashes), takes --samples overviews and prints per
sample: Redis commands, round trips' wall time in this client, and the server's CPU time
spent on them (INFO commandstats), then the same per second at one sample every --every
seconds. Run it on a Redis of its own: commandstats counts every client's commands. It
writes under a key prefix of its own and deletes those keys at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from es_workers import Content, RedisStorage, Store
from es_workers.dashboard.data import overview

ENTITY = "account"


class Opened(Content):
    owner: str


def command_stats(client: redis.Redis) -> tuple[int, int]:
    """(calls, microseconds) over every command the server ran since its start."""
    stats = client.info("commandstats")
    return (sum(int(s["calls"]) for s in stats.values()),
            sum(int(s["usec"]) for s in stats.values()))


def fill(store: Store, storage: RedisStorage, entities: int, subscribers: list[str]) -> None:
    for number in range(entities):
        with store.open(ENTITY, f"e-{number}") as stream:
            stream.write(Opened(owner=str(number)))
    for subscriber_id in subscribers:  # every subscriber up to date
        storage.state.move_checkpoints(
            subscriber_id, ENTITY, {f"e-{number}": 1 for number in range(entities)}
        )


def measure(client: redis.Redis, entities: int, subscriber_count: int, samples: int,
            every: float) -> None:
    prefix = f"bench-dash-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(client, prefix=prefix)
    store = Store(storage, events={ENTITY: [Opened]})
    subscribers = [f"sub-{n}" for n in range(subscriber_count)]
    for subscriber_id in subscribers:
        store.subscribe(ENTITY, subscriber_id, lambda event: None)
    try:
        fill(store, storage, entities, subscribers)
        overview(store)  # warm up connections
        calls_before, usec_before = command_stats(client)
        started = time.perf_counter()
        for _ in range(samples):
            overview(store)
        wall = (time.perf_counter() - started) / samples
        calls_after, usec_after = command_stats(client)
        calls = (calls_after - calls_before - 1) / samples  # minus the INFO itself
        server_ms = (usec_after - usec_before) / samples / 1000
        print(f"{entities:>7} entities, {subscriber_count} subscribers, 16 partitions: "
              f"{calls:.0f} commands/sample, {wall * 1000:.1f} ms/sample in the client, "
              f"{server_ms:.2f} ms/sample of Redis CPU; at one sample per {every:g} s: "
              f"{calls / every:.0f} commands/s, {server_ms / every:.2f} ms/s of Redis CPU "
              f"({server_ms / every / 10:.2f}% of a core)")
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for offset in range(0, len(keys), 500):
            client.delete(*keys[offset:offset + 500])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--entities", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--every", type=float, default=3.0)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    for entities in args.entities:
        measure(client, entities, args.subscribers, args.samples, args.every)


if __name__ == "__main__":
    main()
