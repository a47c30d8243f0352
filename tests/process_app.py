"""An app for the process tests: run by real `es-workers publish` / `worker` processes.

Configured by environment: ES_REDIS_URL, ES_PREFIX (key prefix, also the Dramatiq
namespace). Every handler call is logged to a Redis list `<prefix>:log:<subscriber>` as
"<entity ID>:<event number>", so the test can check order, loss and duplicates.
"""

from __future__ import annotations

import os
import random
import time

import redis

from es_workers import Content, Event, RedisStorage, Store
from es_workers.redis.publisher import PublisherOptions
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus
from es_workers.workers.delivery import DeliveryOptions

URL = os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ["ES_PREFIX"]


class Added(Content):
    amount: int


client = redis.Redis.from_url(URL)
store = Store(
    RedisStorage(
        client,
        prefix=PREFIX,
        partitions=4,
        publisher=PublisherOptions(
            claim_idle_ms=1000, claim_every_ms=300, block_ms=200, redrive_after_ms=1500
        ),
    ),
    bus=DramatiqEventBus(
        WakingRedisBroker(url=URL, namespace=f"{PREFIX}-dq"),
        options=DeliveryOptions(
            lock_ms=1500, min_backoff_ms=20, max_backoff_ms=200
        ),
        max_retries=50,
        max_backoff_ms=500,
    ),
    events={"counter": [Added]},
)


def record(subscriber_id: str, event: Event) -> None:
    client.rpush(f"{PREFIX}:log:{subscriber_id}", f"{event.entity_id}:{event.event_number}")


@store.subscribe("counter", "fast")
def fast(event: Event) -> None:
    record("fast", event)


@store.subscribe("counter", "slow")
def slow(event: Event) -> None:
    # Slow enough that kills land in the middle of handling.
    time.sleep(random.uniform(0, 0.004))
    record("slow", event)
