"""WakingRedisBroker: Dramatiq's RedisBroker, with idle consumers woken by a message.

Dramatiq's Redis consumers poll: after an empty fetch they sleep up to the worker timeout
(`dramatiq_worker_timeout`). A short timeout gives low latency but costs Redis commands
and CPU while idle (measured here with 3 subscribers: ~5,300 commands/s at 5 ms, ~1,200 at
20 ms); a long one makes a quiet worker slow to react (~1 s at Dramatiq's default).

This broker publishes the queue name on a Redis channel after each enqueue (`enqueue_many`:
once per queue for a batch of messages, all on one pipeline; a delayed message names its
delay queue, `<q>.DQ`). In each worker process one listener thread follows that channel,
and an idle consumer of a queue waits for its queue to be named (or `idle_timeout_ms`)
instead of sleeping. Delay queues (retries and re-sent notices) wait the same way, but never
past the earliest eta of the messages their consumer thread holds: it moves a due message
to its queue only when the consumer returns to it.

A wake-up that is lost (Redis pub/sub is fire-and-forget, and a plain RedisBroker sends
none) only costs latency: the consumer still fetches at least every `idle_timeout_ms`.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import ConnectionClosed

from ..backoff import Backoff
from .dramatiq_internals import (
    RedisConsumer,
    current_millis,
    dispatch_script,
    enqueue_call,
    has_cached_messages,
    held_until,
)

log = logging.getLogger("es_workers.workers.broker")

# What a consumer or the wake-up listener meets while Redis is unreachable, failing over or
# out of memory (Dramatiq's consumer turns redis-py's ConnectionError into ConnectionClosed).
UNAVAILABLE = (ConnectionClosed, redis.ConnectionError, redis.TimeoutError,
               redis.exceptions.ReadOnlyError, redis.exceptions.MasterDownError,
               redis.exceptions.OutOfMemoryError)
OUTAGE_BACKOFF = Backoff(100, 5000)
OUTAGE_POLL_S = 1.0  # a waiting consumer returns to its worker this often (to see a stop)


class _Outage:
    """Redis failures met by the consumers and the wake-up listener of one broker (one
    process): they all wait out one shared backoff, with one warning per backoff step and
    one info line once Redis answers again, rather than a critical line per consumer every
    few seconds (what Dramatiq's consumer threads log when left to themselves)."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._lock = threading.Lock()
        self._since: float | None = None
        self._steps = 0
        self._retry_at = 0.0

    def failed(self, error: BaseException) -> float:
        """Records a failure; returns how long to wait before trying again (seconds)."""
        with self._lock:
            now = time.monotonic()
            if self._since is None:
                self._since, self._steps = now, 0
            if now >= self._retry_at:
                self._steps += 1
                delay = self._backoff.delay_s(self._steps)
                self._retry_at = now + delay
                log.warning("Redis broker unavailable: %s: %s; retrying in %.1f s (attempt %d)",
                            type(error).__name__, error, delay, self._steps)
            return self._retry_at - now

    def succeeded(self) -> None:
        if self._since is None:  # the usual case: no lock taken
            return
        with self._lock:
            if self._since is not None:
                log.info("Redis broker recovered after %.1f s",
                         time.monotonic() - self._since)
                self._since, self._retry_at = None, 0.0


class _Wakeups:
    """Follows the wake channel in a daemon thread; counts wake-ups per queue."""

    def __init__(self, client: redis.Redis, channel: str, outage: _Outage) -> None:
        self._outage = outage
        self._client = client
        self._channel = channel
        # A condition per queue, all on one lock: a wake-up rouses the consumers of the
        # queue it names, not every idle consumer of the process (each publisher round
        # names its queues, hundreds of times a second under load).
        self._lock = threading.Lock()
        self._changed: dict[str, threading.Condition] = {}
        self._counts: dict[str, int] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="es-wakeups", daemon=True)
        self._thread.start()

    def count(self, queue_name: str) -> int:
        with self._lock:
            return self._counts.get(queue_name, 0)

    def wait(self, queue_name: str, seen: int, timeout: float) -> None:
        """Returns once the queue was named after `seen` was read, or after `timeout` s."""
        with self._lock:
            changed = self._changed.get(queue_name)
            if changed is None:
                changed = self._changed[queue_name] = threading.Condition(self._lock)
            changed.wait_for(
                lambda: self._counts.get(queue_name, 0) != seen or self._stopped.is_set(),
                timeout,
            )

    def _listen(self) -> None:
        """Follows the channel; after an error, one warning per retry (with backoff) and
        one "recovered" line once subscribed again."""
        while not self._stopped.is_set():
            # cast: redis-py typed pubsub() only from 8.2; this reads the same on both.
            pubsub = cast(Any, self._client).pubsub()
            try:
                pubsub.subscribe(self._channel)
                self._outage.succeeded()
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._woken(message["data"])
                    elif message["type"] == "subscribe":
                        # Subscribed (at start, or again after an outage): what was enqueued
                        # before woke nobody, so every waiting consumer fetches once now
                        # instead of at its idle timeout.
                        self._woken_all()
            except (*UNAVAILABLE, redis.RedisError) as error:
                if self._stopped.is_set():  # its connection went with the broker: no outage
                    return
                # Consumers fall back to their idle timeout meanwhile.
                self._stopped.wait(self._outage.failed(error))
            finally:
                pubsub.close()

    def _woken(self, data: bytes | str) -> None:
        with self._lock:
            self._name(data.decode() if isinstance(data, bytes) else data)

    def _woken_all(self) -> None:
        with self._lock:
            for queue_name in list(self._changed):
                self._name(queue_name)

    def _name(self, queue_name: str) -> None:
        """Counts a wake-up of the queue and rouses its waiting consumers (lock held)."""
        self._counts[queue_name] = self._counts.get(queue_name, 0) + 1
        changed = self._changed.get(queue_name)
        if changed is not None:  # else no consumer of it has waited yet
            changed.notify_all()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for changed in self._changed.values():
                changed.notify_all()


class WakingRedisBroker(RedisBroker):
    """A RedisBroker whose idle consumers wait for a wake-up instead of polling.

    Takes RedisBroker's arguments (`url=`, `client=`, `namespace=`, ...) and
    `idle_timeout_ms`, the longest an idle consumer waits before fetching anyway.
    """

    def __init__(self, *, idle_timeout_ms: int = 1000, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self.idle_timeout_ms = idle_timeout_ms
        self.wake_channel = f"{self.namespace}:wake"
        self._wakeups: _Wakeups | None = None
        self._wakeups_lock = threading.Lock()
        self.outage = _Outage(OUTAGE_BACKOFF)
        self._dispatch_loaded = False

    @property
    def consumer_class(self) -> type[RedisConsumer]:
        return _WakingConsumer

    def wakeups(self) -> _Wakeups:
        with self._wakeups_lock:
            if self._wakeups is None:  # first consumer of this process
                self._wakeups = _Wakeups(self.client, self.wake_channel, self.outage)
            return self._wakeups

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueues as RedisBroker does, then wakes the queue's consumers: a delayed message
        goes to the delay queue (`<queue>.DQ`), whose consumers then hold it until its eta."""
        enqueued = super().enqueue(message, delay=delay)
        self.client.publish(self.wake_channel, enqueued.queue_name)
        return enqueued

    def enqueue_many(self, messages: Sequence[Message[Any]]) -> list[Message[Any]]:
        """Enqueues messages (none delayed) as `enqueue` does, in one round trip: Dramatiq's
        enqueue script for each message on one pipeline, in order, then one wake-up per
        queue named. Middleware sees `before_enqueue` for each message before the pipeline
        is sent and `after_enqueue` for each once it is (as from `enqueue`). Returns the
        messages enqueued; raises the first error met, once the others are in (a caller
        sends again, as after a failed `enqueue`)."""
        if not messages:
            return []
        enqueued = [message.copy(options={"redis_message_id": str(uuid.uuid4())})
                    for message in messages]
        for message in enqueued:
            self.emit_before("enqueue", message, None)
        if not self._dispatch_loaded:  # once: so the first round does not meet NOSCRIPT
            self.client.script_load(dispatch_script(self))
            self._dispatch_loaded = True
        pending = enqueued
        for attempt in (1, 2):
            failed = self._enqueue_pipelined(pending)
            errors = {id(message): error for message, error in failed}
            for message in pending:
                if id(message) not in errors:
                    self.emit_after("enqueue", message, None)
            if not failed:
                break
            other = [e for e in errors.values()
                     if not isinstance(e, redis.exceptions.NoScriptError)]
            if other or attempt == 2:
                raise (other or list(errors.values()))[0]
            # A Redis that lost the script (flushed, or another server after a failover):
            # load it, send those again.
            self.client.script_load(dispatch_script(self))
            pending = [message for message, _ in failed]
        return enqueued

    def _enqueue_pipelined(
        self, messages: Sequence[Message[Any]]
    ) -> list[tuple[Message[Any], Exception]]:
        """One pipeline: each message's enqueue script, then a PUBLISH per queue named.
        Returns the messages whose script failed, with the error."""
        pipe = self.client.pipeline(transaction=False)
        for message in messages:
            self.logger.debug("Enqueueing message %r on queue %r.", message.message_id,
                              message.queue_name)
            sha, arguments = enqueue_call(self, message.queue_name,
                                          message.options["redis_message_id"],
                                          message.encode())
            pipe.evalsha(sha, 1, *arguments)
        for queue_name in dict.fromkeys(message.queue_name for message in messages):
            pipe.publish(self.wake_channel, queue_name)
        replies = pipe.execute(raise_on_error=False)
        return [(message, reply) for message, reply in zip(messages, replies, strict=False)
                if isinstance(reply, Exception)]

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if signal == "worker_shutdown":
            self._stop_wakeups()  # idle consumers return now, not after idle_timeout_ms
        super().emit_before(signal, *args, **kwargs)

    def close(self) -> None:
        self._stop_wakeups()
        super().close()

    def _stop_wakeups(self) -> None:
        with self._wakeups_lock:
            if self._wakeups is not None:
                self._wakeups.stop()
                self._wakeups = None


class _HeldEtas:
    """The etas of the delayed messages a consumer handed its worker's consumer thread, which
    holds each in memory until its eta and moves the due ones to their queue after each
    return of the consumer's `__next__` (see dramatiq_internals.held_until)."""

    def __init__(self) -> None:
        self._etas: list[int | float] = []  # a heap; ms on current_millis' clock
        self._returned_at = 0  # when __next__ last returned (current_millis)

    def handed(self, message: Any) -> None:
        eta = held_until(message)
        if eta is not None:
            heapq.heappush(self._etas, eta)

    def returned(self) -> None:
        self._returned_at = current_millis()

    def due_in_s(self) -> float | None:
        """Seconds until the earliest held message is due (0: due now), or None if none is
        held. Those due when __next__ last returned were moved then: they are dropped."""
        while self._etas and self._etas[0] <= self._returned_at:
            heapq.heappop(self._etas)
        if not self._etas:
            return None
        # +1 ms: current_millis() truncates, and the consumer thread moves a message only
        # once current_millis() >= its eta.
        return max(0.0, (self._etas[0] + 1 - current_millis()) / 1000)


class _WakingConsumer(RedisConsumer):
    def __init__(self, broker: WakingRedisBroker, queue_name: str, prefetch: int,
                 timeout: int) -> None:
        # Its own sleep after an empty fetch stays under a millisecond; the wait replaces it.
        super().__init__(broker, queue_name, prefetch, 1)  # type: ignore[no-untyped-call]
        self._idle_timeout = max(broker.idle_timeout_ms, timeout) / 1000
        # With its prefetch full of messages being handled (none held) a consumer fetches
        # nothing and waits for their acks, not for a wake-up: a main queue's keeps the
        # short sleep, a delay queue's the poll timeout Dramatiq's sleep had.
        self._full_wait = timeout / 1000 if queue_name.endswith(".DQ") else 0.0
        self._wakeups = broker.wakeups()
        self._outage = broker.outage
        self._held = _HeldEtas()

    def __next__(self) -> Any:
        """The next message, or None. While Redis is unavailable it waits out the broker's
        backoff in steps and returns None, so the worker thread keeps running (and can
        stop) instead of restarting its consumer and logging each failure."""
        # Only a fetch says Redis answers: a consumer with messages prefetched, or with its
        # prefetch full of messages being handled, returns without asking it.
        asks_redis = (not has_cached_messages(self)
                      and self.outstanding_message_count < self.prefetch)
        try:
            message = self._next()
        except UNAVAILABLE as error:
            time.sleep(min(self._outage.failed(error), OUTAGE_POLL_S))
            message = None
        else:
            if asks_redis:
                self._outage.succeeded()
        self._held.returned()
        return message

    def _next(self) -> Any:
        seen = self._wakeups.count(self.queue_name)
        fetches = self.outstanding_message_count < self.prefetch
        message = super().__next__()  # type: ignore[no-untyped-call]
        if message is not None:
            self._held.handed(message)
            return message
        timeout = self._wait_s(fetches)
        if timeout > 0:
            self._wakeups.wait(self.queue_name, seen, timeout)
        return None

    def _wait_s(self, fetched: bool) -> float:
        """How long to wait for a wake-up after returning no message: up to the idle timeout,
        never past the earliest eta of a message held by the consumer thread."""
        due_in = self._held.due_in_s()
        if due_in is not None:
            return min(due_in, self._idle_timeout)
        return self._idle_timeout if fetched else self._full_wait
