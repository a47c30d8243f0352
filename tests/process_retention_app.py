"""An app for the scavenger process test: `es-workers scavenge` runs it (and is killed).

Configured by environment: ES_REDIS_URL, ES_PREFIX. The entity type `counter` keeps its
last 5 events (`Retention(max_count=5)`); the subscriber `audit` holds back what it has not
handled (no worker runs: the test moves its checkpoints).
"""

from __future__ import annotations

import os

import redis

from es_workers import Content, RedisStorage, Retention, Store
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus

URL = os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ["ES_PREFIX"]
KEPT = 5


class Added(Content):
    amount: int


store = Store(
    RedisStorage(redis.Redis.from_url(URL), prefix=PREFIX, partitions=4),
    bus=DramatiqEventBus(WakingRedisBroker(url=URL, namespace=f"{PREFIX}-dq")),
    events={"counter": [Added]},
    retention={"counter": Retention(max_count=KEPT)},
)
store.subscribe("counter", "audit", lambda event: None)
