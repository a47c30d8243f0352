"""The app run by bench/e2e.py's publisher and worker processes.

Configured by environment: BENCH_BROKER (waking or polling), BENCH_REDIS_URL,
BENCH_PREFIX (key prefix; the Dramatiq namespace is "<prefix>-dq"), BENCH_DIR (where
workers write the latencies they saw).

- `tick` events go to the subscriber `latency`, which writes `now - event_time` (seconds)
  to BENCH_DIR/latency-<pid>.txt, one line per event (P4);
- `bulk` events go to the subscriber `bulk`, a no-op handler (P5); `single` events too,
  to the subscriber `single` (P5 with one event per entity: no notice carries two events);
- `noop` is a bare Dramatiq actor doing nothing, on the same broker: P5's yardstick.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TextIO

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from es_workers import Content, Event, RedisStorage, Store
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "bench-e2e")
OUT = os.environ.get("BENCH_DIR", ".")
NOOP_QUEUE = "bench_noop"


class Tick(Content):
    n: int


class Added(Content):
    amount: int


# BENCH_BROKER=polling: Dramatiq's own RedisBroker; waking (the default, as in
# Store.from_settings): consumers woken by the enqueue instead of polling.
if os.environ.get("BENCH_BROKER", "waking") == "polling":
    broker: RedisBroker = RedisBroker(url=URL, namespace=f"{PREFIX}-dq")  # type: ignore[no-untyped-call]
else:
    broker = WakingRedisBroker(url=URL, namespace=f"{PREFIX}-dq")
store = Store(
    RedisStorage(redis.Redis.from_url(URL), prefix=PREFIX),
    bus=DramatiqEventBus(broker),
    events={"tick": [Tick], "bulk": [Added], "single": [Added]},
)

_out_lock = threading.Lock()
_out: dict[int, TextIO] = {}


def _latency_file() -> TextIO:
    pid = os.getpid()  # per worker process (Dramatiq forks them)
    with _out_lock:
        if pid not in _out:
            _out[pid] = open(os.path.join(OUT, f"latency-{pid}.txt"), "a", buffering=1)  # noqa: SIM115
        return _out[pid]


@store.subscribe("tick", "latency")
def latency(event: Event) -> None:
    seen = time.time() - event.event_time.timestamp()
    _latency_file().write(f"{seen:.6f}\n")


@store.subscribe("bulk", "bulk")
def bulk(event: Event) -> None:
    pass


@store.subscribe("single", "single")
def single(event: Event) -> None:
    pass


@dramatiq.actor(broker=broker, actor_name="bench_noop", queue_name=NOOP_QUEUE, max_retries=0)
def noop() -> None:
    pass
