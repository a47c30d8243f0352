"""An app for the lease process tests (test_processes_lease.py), run by real `es-workers
publish` / `worker` processes, on a short lock lease (LEASE_MS).

Configured by environment: ES_REDIS_URL, ES_PREFIX. Subscriber `timed` takes as long as
each event's amount says, in milliseconds of its own running (10 ms steps: a process paused
meanwhile resumes where it was); amount -1 raises SystemExit, -2 KeyboardInterrupt. Each
call is logged to the Redis list `<prefix>:calls` as "start|end:<entity ID>:<event
number>:<pid>" ("end" only when the handler returns), in the order they happened.
"""

from __future__ import annotations

import os
import time

import redis

from es_workers import Content, Event, RedisStorage, Store
from es_workers.redis.publisher import PublisherOptions
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus
from es_workers.workers.delivery import DeliveryOptions

URL = os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ["ES_PREFIX"]
LEASE_MS = 600
STEP_S = 0.01
RAISES: dict[int, type[BaseException]] = {-1: SystemExit, -2: KeyboardInterrupt}


class Added(Content):
    amount: int


client = redis.Redis.from_url(URL)
store = Store(
    RedisStorage(
        client,
        prefix=PREFIX,
        partitions=4,
        publisher=PublisherOptions(claim_idle_ms=1000, claim_every_ms=300, block_ms=200,
                                   sweep_every_ms=100, redrive_after_ms=500),
    ),
    bus=DramatiqEventBus(
        WakingRedisBroker(url=URL, namespace=f"{PREFIX}-dq"),
        options=DeliveryOptions(lock_ms=LEASE_MS, max_attempts=2, min_backoff_ms=20,
                                max_backoff_ms=100),
        max_backoff_ms=500,
    ),
    events={"counter": [Added]},
)


def log(what: str, event: Event) -> None:
    client.rpush(f"{PREFIX}:calls",
                 f"{what}:{event.entity_id}:{event.event_number}:{os.getpid()}")


@store.subscribe("counter", "timed")
def timed(event: Event) -> None:
    assert isinstance(event.content, Added)
    log("start", event)
    if event.content.amount in RAISES:
        raise RAISES[event.content.amount](f"amount {event.content.amount}")
    for _ in range(event.content.amount // 10):
        time.sleep(STEP_S)
    log("end", event)
