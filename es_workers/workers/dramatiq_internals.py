"""Every use of Dramatiq's private API, in one place (pyproject pins dramatiq < 3).

- `RedisConsumer`: `dramatiq.brokers.redis._RedisConsumer`, the class behind RedisBroker's
  documented `consumer_class` hook; `WakingRedisBroker` subclasses it to wait for a wake-up
  instead of sleeping after an empty fetch. Nothing public does that.
- `redis_broker_scripts`: the Lua scripts RedisBroker loads (`_scripts`), so the demo's
  embedded fakeredis server can preload them: it drops a connection on a NOSCRIPT reply.
- `has_cached_messages`: whether a RedisConsumer will answer its next `__next__` from the
  messages it prefetched (`message_cache`), without asking Redis: a consumer that got a
  message that way says nothing about whether Redis is back after an outage.
- `enqueue_call`: what RedisBroker's `enqueue` hands its Lua dispatch script (`scripts`,
  `_dispatch`'s argument list, `_should_do_maintenance`, `_max_unpack_size`), so
  `WakingRedisBroker.enqueue_many` can queue many messages on one pipeline. Dramatiq offers
  no batch enqueue.
- `held_until`: the `eta` option of a message from a delay queue. Dramatiq's
  `ConsumerThread` holds such a message in memory (`handle_message`) and moves the due ones
  to their queue (`handle_delayed_messages`) after each return of its consumer's `__next__`;
  so a delay queue's consumer may wait for a wake-up only until the earliest eta it handed
  out. Nothing public says when a held message moves.
- `stop_already_requested`: reads the `running` flag Dramatiq's worker-process SIGTERM
  handler closes over, to know whether a stop arrived before our middleware was installed.
  Dramatiq offers no public way to ask.

tests/test_dramatiq_internals.py fails loudly when an upgrade of Dramatiq changes any.
"""

from __future__ import annotations

from typing import Any

from dramatiq.brokers import redis as dramatiq_redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.redis import _RedisConsumer as RedisConsumer
from dramatiq.common import current_millis

__all__ = [
    "RedisConsumer",
    "closure_value",
    "current_millis",
    "enqueue_call",
    "has_cached_messages",
    "held_until",
    "redis_broker_scripts",
    "stop_already_requested",
]


def has_cached_messages(consumer: RedisConsumer) -> bool:
    return bool(consumer.message_cache)


def held_until(message: Any) -> int | float | None:
    """When the worker's consumer thread moves a message it was handed to its queue (ms since
    the epoch, on `current_millis`' clock), or None for one it hands straight to the worker
    threads (with no eta, or one that is not a number: Dramatiq moves those at once)."""
    eta = message.options.get("eta")
    if isinstance(eta, bool) or not isinstance(eta, int | float):
        return None
    return eta


def enqueue_call(broker: RedisBroker, queue_name: str, redis_message_id: str,
                 data: bytes) -> tuple[str, list[Any]]:
    """The SHA1 of RedisBroker's dispatch script and the keys + arguments its `enqueue`
    passes it (`do_enqueue(queue_name, redis_message_id, data)`): for an `EVALSHA sha 1
    *arguments` of our own, on a pipeline."""
    command = "enqueue"
    arguments: list[Any] = [
        broker.namespace,  # the one key
        command,
        current_millis(),
        queue_name,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        broker._should_do_maintenance(command),
        broker._max_unpack_size(),  # type: ignore[no-untyped-call]
        redis_message_id,
        data,
    ]
    return str(broker.scripts["dispatch"].sha), arguments


def dispatch_script(broker: RedisBroker) -> str:
    """The source of RedisBroker's dispatch script (to load it after a NOSCRIPT)."""
    script = dramatiq_redis._scripts["dispatch"]
    return script.decode() if isinstance(script, bytes) else str(script)


def redis_broker_scripts() -> list[str]:
    return [
        script.decode() if isinstance(script, bytes) else str(script)
        for script in dramatiq_redis._scripts.values()
    ]


def closure_value(function: Any, name: str) -> object:
    """The value of a variable `function` closes over, or None."""
    code = getattr(function, "__code__", None)
    cells = getattr(function, "__closure__", None) or ()
    if code is None or name not in code.co_freevars:
        return None
    try:
        return cells[code.co_freevars.index(name)].cell_contents
    except (IndexError, ValueError):
        return None


def stop_already_requested(sigterm_handler: Any) -> bool:
    """Whether Dramatiq's worker-process SIGTERM handler has already seen a stop."""
    return closure_value(sigterm_handler, "running") is False
