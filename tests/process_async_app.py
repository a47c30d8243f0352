"""An app of `async def` handlers for the process tests, run by real `es-workers publish` /
`worker` processes (the handlers run on Dramatiq's AsyncIO event loop).

Configured by environment: ES_REDIS_URL, ES_PREFIX. Each handler call is logged to a Redis
list `<prefix>:log:<subscriber>` as "<entity ID>:<event number>"; `fragile` fails on event
2 of entity "poison", every time.
"""

from __future__ import annotations

import asyncio
import os
import random

import redis
import redis.asyncio

from es_workers import Content, Event, RedisStorage, Store
from es_workers.redis.publisher import PublisherOptions
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus
from es_workers.workers.delivery import DeliveryOptions

URL = os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ["ES_PREFIX"]


class Added(Content):
    amount: int


store = Store(
    RedisStorage(
        redis.Redis.from_url(URL),
        prefix=PREFIX,
        partitions=4,
        publisher=PublisherOptions(claim_idle_ms=1000, claim_every_ms=300, block_ms=200),
    ),
    bus=DramatiqEventBus(
        WakingRedisBroker(url=URL, namespace=f"{PREFIX}-dq"),
        options=DeliveryOptions(max_attempts=3, min_backoff_ms=20, max_backoff_ms=100),
        max_backoff_ms=500,
    ),
    events={"counter": [Added]},
)
# Used only on the worker's event loop (an asyncio client belongs to one loop).
log = redis.asyncio.Redis.from_url(URL)


async def record(subscriber_id: str, event: Event) -> None:
    await log.rpush(f"{PREFIX}:log:{subscriber_id}", f"{event.entity_id}:{event.event_number}")


@store.subscribe("counter", "ordered")
async def ordered(event: Event) -> None:
    await asyncio.sleep(random.uniform(0, 0.003))  # lets the loop interleave entities
    await record("ordered", event)


@store.subscribe("counter", "fragile")
async def fragile(event: Event) -> None:
    if (event.entity_id, event.event_number) == ("poison", 2):
        raise RuntimeError("poison #2")
    await record("fragile", event)
