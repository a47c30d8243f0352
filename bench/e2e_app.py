"""The app run by bench/e2e.py's publisher and worker processes.

Configured by environment: BENCH_BROKER (waking or polling), BENCH_REDIS_URL,
BENCH_PREFIX (key prefix; the Dramatiq namespace is "<prefix>-dq"), BENCH_DIR (where
workers write the latencies they saw), and for bench/archive_impact.py BENCH_ARCHIVE_URL (a
PostgreSQL: the store gets an archive, which `es-workers archive bench.e2e_app:store` fills)
with BENCH_ARCHIVE_HOT (the hot window of `cold` events, default 20); the publisher
scavenges every BENCH_SCAVENGE_MS (default 0: never; the archiver does).

- `tick` events go to the subscriber `latency`, which writes one line per event to
  BENCH_DIR/latency-<pid>.txt: the tick's number and the timeline of its delivery (P4; see
  STAMPS). The stamps are taken from outside the package: the event's `event_time`, a
  Redis client class of the bench's own that notes when the publisher's XREADGROUP
  returned, a Dramatiq middleware (`before_enqueue` in the publisher, `before_process_message`
  in the worker), a wrapper around the broker's consumers (when a consumer hands a message
  to its worker), the handler itself, and the bus' `observer` (called once the delivery's
  checkpoint is recorded and its lock released);
- `bulk` events go to the subscriber `bulk`, a no-op handler (P5); `single` events too,
  to the subscriber `single` (P5 with one event per entity: no notice carries two events);
- `cold` events have no subscriber: bench/archive_impact.py writes them steadily so that an
  archiver always has events past their hot window to copy;
- `noop` is a bare Dramatiq actor doing nothing, on the same broker: P5's yardstick.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, TextIO

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from es_workers import Content, Event, HotWindow, RedisStorage, Store
from es_workers.redis import PublisherOptions
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus
from es_workers.workers.delivery import Notice

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "bench-e2e")
OUT = os.environ.get("BENCH_DIR", ".")
ARCHIVE_URL = os.environ.get("BENCH_ARCHIVE_URL")
ARCHIVE_HOT = int(os.environ.get("BENCH_ARCHIVE_HOT", "20"))
SCAVENGE_MS = int(os.environ.get("BENCH_SCAVENGE_MS", "0"))
NOOP_QUEUE = "bench_noop"


class Tick(Content):
    n: int


class Added(Content):
    amount: int


STAMPS = ("read", "sent", "fetched", "started", "handler", "handled", "done")
"""A P4 line: tick number, event_time, then these (UNIX seconds, "nan" when unknown):
read     the publisher's XREADGROUP that returned the tick's outbox entry returned
sent     the publisher began enqueueing the notice (Dramatiq `before_enqueue`; a round's
         messages all see it before the pipeline that enqueues them is sent)
fetched  the worker's consumer thread handed the message on (to the work queue)
started  a worker thread began processing it (`before_process_message`, our middleware last)
handler  the handler was called (after the lock was taken and the events read)
handled  the handler returned
done     the delivery ended: checkpoint recorded, lock released (the bus' observer)"""

_read_at = float("nan")  # publisher process: when XREADGROUP last returned entries


class _TimedRedis(redis.Redis):
    """The publisher reads its outboxes with XREADGROUP, alone or last on a pipeline (after
    the previous round's acknowledgements): note when a read returned entries."""

    def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        global _read_at
        reply = super().xreadgroup(*args, **kwargs)
        if reply:
            _read_at = time.time()
        return reply

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return _TimedPipeline(self.connection_pool, self.response_callbacks, transaction,
                              shard_hint)


class _TimedPipeline(redis.client.Pipeline):
    def execute(self, raise_on_error: bool = True) -> Any:
        global _read_at
        reads = bool(self.command_stack) and self.command_stack[-1][0][0] == "XREADGROUP"
        replies = super().execute(raise_on_error)
        if reads and replies and replies[-1]:
            _read_at = time.time()
        return replies


class _StampedConsumer:
    """A broker's consumer whose messages carry when the consumer handed them on."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def __iter__(self) -> _StampedConsumer:
        return self

    def __next__(self) -> Any:
        message = next(self._consumer)
        if message is not None:
            message.options["bench_fetched"] = time.time()
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class _Stamping:
    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        return _StampedConsumer(super().consume(queue_name, prefetch, timeout))  # type: ignore[misc]


class _StampedRedisBroker(_Stamping, RedisBroker):
    pass


class _StampedWakingBroker(_Stamping, WakingRedisBroker):
    pass


_current = threading.local()  # worker thread: the message it processes, its handled ticks


class _Stamps(dramatiq.Middleware):
    def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        message.options["bench_read"] = _read_at
        message.options["bench_sent"] = time.time()

    def before_process_message(self, broker: Any, message: Any) -> None:
        _current.options = dict(message.options, bench_started=time.time())


# BENCH_BROKER=polling: Dramatiq's own RedisBroker; waking (the default, as in
# Store.from_settings): consumers woken by the enqueue instead of polling.
if os.environ.get("BENCH_BROKER", "waking") == "polling":
    broker: RedisBroker = _StampedRedisBroker(url=URL, namespace=f"{PREFIX}-dq")  # type: ignore[no-untyped-call]
else:
    broker = _StampedWakingBroker(url=URL, namespace=f"{PREFIX}-dq")


def _delivered(notice: Notice) -> None:
    """The bus' observer: the delivery is over; write the ticks it handled."""
    ticks = getattr(_current, "ticks", None)
    if not ticks:
        return
    done = time.time()
    lines = "".join(f"{line} {done:.6f}\n" for line in ticks)
    ticks.clear()
    _latency_file().write(lines)


def _archive() -> Any:
    if not ARCHIVE_URL:
        return None
    from es_workers.postgres import PostgresArchive  # psycopg: the archive extra

    return PostgresArchive(ARCHIVE_URL, prefix=PREFIX)


store = Store(
    RedisStorage(_TimedRedis.from_url(URL), prefix=PREFIX, archive=_archive(),
                 # with an archive, the publisher removes what was archived, as an app would
                 publisher=PublisherOptions(scavenge_interval_ms=SCAVENGE_MS or None)),
    bus=DramatiqEventBus(broker, observer=_delivered),
    events={"tick": [Tick], "bulk": [Added], "single": [Added], "cold": [Added]},
    # Only `cold` events are archived: P4's writer reads `tick` entities from their first
    # event through an AsyncStore without the archive (its entities outgrow 100 events after
    # a few rounds of bench/archive_impact.py).
    archive={"cold": HotWindow(events=ARCHIVE_HOT), "tick": HotWindow(events=10**9)},
)
broker.add_middleware(_Stamps())  # last: `started` is as close to the actor call as can be

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
    called = time.time()
    options = getattr(_current, "options", {})
    stamps = [options.get(f"bench_{name}", float("nan")) for name in STAMPS[:4]]
    line = " ".join(
        f"{value:.6f}" for value in [event.event_time.timestamp(), *stamps, called, time.time()]
    )
    if not hasattr(_current, "ticks"):
        _current.ticks = []
    _current.ticks.append(f"{event.content.n} {line}")  # type: ignore[attr-defined]


@store.subscribe("bulk", "bulk")
def bulk(event: Event) -> None:
    pass


@store.subscribe("single", "single")
def single(event: Event) -> None:
    pass


@dramatiq.actor(broker=broker, actor_name="bench_noop", queue_name=NOOP_QUEUE, max_retries=0)
def noop() -> None:
    pass
