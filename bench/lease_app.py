"""The app run by bench/lease.py's publisher and worker processes, wired from ES_...
settings (Store.from_settings: ES_REDIS_URL, ES_PREFIX, ES_LOCK_MS, ...).

- subscriber `slow`: on entity "slow", each event takes BENCH_HANDLER_S seconds (0.01 s
  steps); every call is logged to the Redis list `<prefix>:bench:calls` as
  "start|end:<event number>:<pid>:<unix time>";
- subscriber `failing`: on entity "failing", every attempt raises; each attempt is logged
  to `<prefix>:bench:attempts` as "<event number>:<unix time>".
Other entities are no-ops for both.
"""

from __future__ import annotations

import os
import time

import redis

from es_workers import Content, Event, Store

HANDLER_S = float(os.environ.get("BENCH_HANDLER_S", "8"))
PREFIX = os.environ["ES_PREFIX"]


class Added(Content):
    amount: int


store = Store.from_settings(events={"counter": [Added]})
client = redis.Redis.from_url(os.environ["ES_REDIS_URL"])


@store.subscribe("counter", "slow")
def slow(event: Event) -> None:
    if event.entity_id != "slow":
        return
    key = f"{PREFIX}:bench:calls"
    client.rpush(key, f"start:{event.event_number}:{os.getpid()}:{time.time()}")
    for _ in range(int(HANDLER_S * 100)):
        time.sleep(0.01)
    client.rpush(key, f"end:{event.event_number}:{os.getpid()}:{time.time()}")


@store.subscribe("counter", "failing")
def failing(event: Event) -> None:
    if event.entity_id != "failing":
        return
    client.rpush(f"{PREFIX}:bench:attempts", f"{event.event_number}:{time.time()}")
    raise RuntimeError(f"failing #{event.event_number}")
