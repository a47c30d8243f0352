"""What Store.wait_for adds to a handler's own time, on a real Redis.

    python bench/wait_for.py [--redis-url URL] [--writes 300]

A publisher (thread) and a Dramatiq worker (threads) run in this process with the broker
users get (WakingRedisBroker). For each write the handler records when it finished; the
bench records when `store.wait_for` returned. Added latency = return - handler finished:
the checkpoint script's Pub/Sub message reaching the waiter, and its check. Printed as
p50 / p99 with the handler's own time (append to handler end) beside it for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid

import dramatiq
import redis

from es_workers import Content, DramatiqEventBus, Event, RedisStorage, Store
from es_workers.redis.publisher import PublisherOptions
from es_workers.workers.broker import WakingRedisBroker


class Ticked(Content):
    n: int


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("ES_REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    parser.add_argument("--writes", type=int, default=300)
    args = parser.parse_args()
    prefix = f"bench-wait-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    broker = WakingRedisBroker(url=args.redis_url, namespace=f"{prefix}:dramatiq")
    store = Store(
        RedisStorage(client, prefix=prefix, publisher=PublisherOptions(block_ms=100)),
        bus=DramatiqEventBus(broker), events={"tick": [Ticked]},
    )
    finished: dict[int, float] = {}

    @store.subscribe("tick", "ticks")
    def handle(event: Event) -> None:
        finished[event.event_number] = time.perf_counter()

    publisher = threading.Thread(target=store.start, daemon=True)
    publisher.start()
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    added: list[float] = []
    whole: list[float] = []
    try:
        with store.open("tick", "t") as stream:
            for n in range(args.writes + 20):
                started = time.perf_counter()
                stream.write(Ticked(n=n))
                store.wait_for("tick", "t", stream.position, timeout=10)
                returned = time.perf_counter()
                if n >= 20:  # warmed up
                    added.append((returned - finished[stream.position]) * 1000)
                    whole.append((finished[stream.position] - started) * 1000)
    finally:
        worker.stop()
        store.close()
        publisher.join(timeout=10)
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    print(f"load average {os.getloadavg()[0]:.2f}; {len(added)} writes, each waited for")
    print(f"wait_for added latency: p50 {percentile(added, 0.5):.2f} ms, "
          f"p99 {percentile(added, 0.99):.2f} ms (mean {statistics.mean(added):.2f})")
    print(f"append to handler end:  p50 {percentile(whole, 0.5):.2f} ms, "
          f"p99 {percentile(whole, 0.99):.2f} ms")


if __name__ == "__main__":
    main()
