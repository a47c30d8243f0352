"""A bank for the rebuild process tests, run by real `es-workers publish`, `worker` and
`rebuild` processes. Configured by environment: ES_REDIS_URL, ES_PREFIX (key prefix, also
the Dramatiq namespace).

- `balances` keeps a read model in Redis, a hash per account (balance, and the number of
  the last event applied, so that a repeated delivery is ignored), and appends to
  `<prefix>:gaps` any event that skips one; its reset hook deletes the read model (and,
  with BANK_APP_HANG_IN_RESET=1, then sets `<prefix>:hanging` and never returns: a
  rebuild to kill halfway);
- `audit` appends each handler call to `<prefix>:log:audit` as "<entity ID>:<number>".
"""

from __future__ import annotations

import os
import threading

import redis

from es_workers import Content, Event, RedisStorage, Store
from es_workers.redis.publisher import PublisherOptions
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus
from es_workers.workers.delivery import DeliveryOptions

URL = os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ["ES_PREFIX"]
READ_MODEL = f"{PREFIX}:balances"


class Opened(Content):
    owner: str


class Deposited(Content):
    amount: int


class Withdrawn(Content):
    amount: int


client = redis.Redis.from_url(URL)
store = Store(
    RedisStorage(
        client,
        prefix=PREFIX,
        partitions=4,
        publisher=PublisherOptions(
            claim_idle_ms=1000, claim_every_ms=300, block_ms=200, sweep_every_ms=200,
            redrive_after_ms=1000,
        ),
    ),
    bus=DramatiqEventBus(
        WakingRedisBroker(url=URL, namespace=f"{PREFIX}-dq"),
        options=DeliveryOptions(lock_ms=1500, min_backoff_ms=20, max_backoff_ms=200),
        max_retries=50,
        max_backoff_ms=500,
    ),
    events={"account": [Opened, Deposited, Withdrawn]},
)


def clear_balances() -> None:
    # Finding the keys of a larger read model takes a while: a handler running meanwhile
    # (were the subscriber not paused) would apply events that are then deleted.
    threading.Event().wait(0.2)
    keys = list(client.scan_iter(f"{READ_MODEL}:*", count=1000))
    if keys:
        client.delete(*keys)
    if os.environ.get("BANK_APP_HANG_IN_RESET") == "1":
        client.set(f"{PREFIX}:hanging", 1)
        threading.Event().wait()


@store.subscribe("account", "balances", reset=clear_balances)
def balances(event: Event) -> None:
    key = f"{READ_MODEL}:{event.entity_id}"
    match event.content:
        case Deposited(amount=amount):
            change = amount
        case Withdrawn(amount=amount):
            change = -amount
        case _:
            change = 0

    def apply(pipe: redis.client.Pipeline) -> None:
        applied = int(pipe.hget(key, "event_number") or 0)
        if event.event_number <= applied:
            return  # a repeated delivery
        pipe.multi()
        if event.event_number != applied + 1:
            pipe.rpush(f"{PREFIX}:gaps", f"{event.entity_id}:{applied}:{event.event_number}")
        pipe.hincrby(key, "balance", change)
        pipe.hset(key, "event_number", event.event_number)

    client.transaction(apply, key)


@store.subscribe("account", "audit")
def audit(event: Event) -> None:
    client.rpush(f"{PREFIX}:log:audit", f"{event.entity_id}:{event.event_number}")
