"""DramatiqEventBus: each subscriber is a Dramatiq actor whose queue is its subscriber ID.

The publisher sends a small notice per (entity, subscriber): `(entity_type, entity_id,
event_number)`. The actor reads the entity's events past its checkpoint and runs the
handler (see `delivery`), so Dramatiq's at-least-once, unordered delivery still gives each
handler every event once, in order per entity, in parallel across entities.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dramatiq
from dramatiq.asyncio import async_to_sync
from dramatiq.middleware.asyncio import AsyncIO

from .. import metrics
from ..errors import ConfigurationError, SubscriberError
from ..event import Event, Handler, as_callable, awaited_in, is_async
from ..names import check_entity_id, check_entity_type, check_subscriber_id, one_reset_hook
from ..ports import (
    ResetHook,
    Storage,
    SubscriberState,
    SubscriberStorage,
    subscriber_storage,
    subscriptions_of,
)
from ..upgrade import Reader
from .broker import WakingRedisBroker
from .delivery import Deliverer, DeliveryOptions, Notice
from .middleware import SingleStop, SubscriberClaim, WorkerHeartbeat
from .rebuild import Rebuild

ACTOR_PREFIX = "es_"
DEFAULT_TIME_LIMIT_MS = 600_000
MAX_NOTICE_ENTITIES = 32
"""Entities one message names at most: more per message costs fewer messages, fewer lets
more workers share a partition's backlog."""
MAX_NOTICE_PARTITIONS = 4
"""Partitions one message names at most: a worker begins and commits them together (a
script call each, on one pipeline); more per message means fewer messages (each costs a
worker Dramatiq's fetch, dispatch and ack) but fewer worker threads sharing a round."""

_M = TypeVar("_M", bound=dramatiq.Middleware)

Observer = Callable[[Notice], None]
"""Called after each notice a worker of this process has finished with (handled, skipped
or failed): a hook for tests and instrumentation. It must not raise."""


class DramatiqEventBus:
    """Delivers events to subscriber actors on `broker` (RedisBroker, RabbitmqBroker, Stub).

    The broker becomes Dramatiq's global broker, so `dramatiq APP_MODULE` and
    `es-workers worker APP` find the actors the app module declares when imported.
    Actor-level failures (Redis down while handling) use Dramatiq's retries, kept short;
    handler failures are retried and parked per entity by `delivery.Deliverer`.

    An `async def` handler runs on the event loop of Dramatiq's `AsyncIO` middleware (added
    to the broker with the first one), awaited by the actor's thread: delivery around it
    (lock, order, checkpoint, retry, parking) is the same as for a function.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        options: DeliveryOptions | None = None,
        max_retries: int = 20,
        max_backoff_ms: int = 30_000,
        time_limit_ms: int = DEFAULT_TIME_LIMIT_MS,
        observer: Observer | None = None,
    ) -> None:
        self.broker = broker
        self.options = options or DeliveryOptions()
        self.observer = observer
        self._actor_options = {
            "max_retries": max_retries,
            "min_backoff": 100,
            "max_backoff": max_backoff_ms,
            "time_limit": time_limit_ms,
        }
        dramatiq.set_broker(broker)
        _middleware(broker, SingleStop)  # clean exit on a process-group SIGTERM
        self._heartbeat = _middleware(broker, WorkerHeartbeat)
        self._claim = _middleware(broker, SubscriberClaim)
        self._lock = threading.Lock()
        self._handlers: dict[tuple[str, str], Callable[[Event], Any]] = {}
        self._actors: dict[str, dramatiq.Actor[Any, Any]] = {}
        self._deliverer: Deliverer | None = None
        self._storage: SubscriberStorage | None = None
        self._resets: dict[str, ResetHook] = {}
        self._partition: Callable[[str, str], int] = lambda entity_type, entity_id: 0

    def bind(self, reader: Reader, storage: Storage) -> None:
        """Subscribers read through `reader` and keep their state in `storage`, which must
        keep subscriber state (`ports.SubscriberStorage`: RedisStorage), else
        ConfigurationError naming what it lacks."""
        bound = subscriber_storage(storage, "DramatiqEventBus")
        state: SubscriberState = bound.subscriber_state()
        self._deliverer = Deliverer(reader, state, self.options)
        self._storage = bound
        self._partition = state.partition
        self._heartbeat.heartbeats = bound.process_heartbeats()
        self._claim.claim = self._worker_boots

    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler) -> None:
        check_entity_type(entity_type)
        check_subscriber_id(subscriber_id)
        function = as_callable(handler)
        if is_async(function):
            if not any(isinstance(m, AsyncIO) for m in self.broker.middleware):
                self.broker.add_middleware(AsyncIO())  # starts the loop when a worker boots
            function = _on_dramatiq_loop(function)
        with self._lock:
            if (entity_type, subscriber_id) in self._handlers:
                raise SubscriberError(
                    f"subscriber {subscriber_id!r} is already registered for {entity_type!r}"
                )
            self._handlers[(entity_type, subscriber_id)] = function
            if subscriber_id not in self._actors:
                self._actors[subscriber_id] = self._declare_actor(subscriber_id)

    def _worker_boots(self) -> None:
        """A Dramatiq worker of this bus boots: its subscribers' series are exported at 0
        (here only: the publisher's process subscribes too, but runs no handler)."""
        with self._lock:
            subscribed = list(self._handlers)
        for entity_type, subscriber_id in subscribed:
            metrics.declare_subscriber(subscriber_id, entity_type)
        self.claim_subscribers()

    def claim_subscribers(self) -> None:
        """Records this app's subscriber IDs, with their entity types, under the storage's
        prefix; raises ConfigurationError if another app runs one of them there (see
        `ports.SubscriberRegistry`). Workers do it as they boot (the publisher does the same in
        `RedisStorage.start_publish`)."""
        if self._storage is None:
            raise ConfigurationError("DramatiqEventBus is not bound to a Store")
        storage = self._storage
        storage.subscriber_registry().claim(subscriptions_of(self, storage.entity_types()))

    def actor(self, subscriber_id: str) -> dramatiq.Actor[Any, Any]:
        """The Dramatiq actor of a subscriber (its queue is the subscriber ID)."""
        with self._lock:
            found = self._actors.get(subscriber_id)
        if found is None:
            raise SubscriberError(f"no subscriber {subscriber_id!r} on this bus")
        return found

    def _declare_actor(self, subscriber_id: str) -> dramatiq.Actor[Any, Any]:
        def deliver(entity_type: str, entity_id: str | None = None,
                    event_number: int | None = None,
                    entities: list[tuple[str, int | None]] | None = None) -> None:
            # A message names one entity, or several (`entities`: [entity ID, event number]
            # pairs) of one partition.
            pairs = [(entity_id, event_number)] if entity_id is not None else entities or []
            self._deliver([Notice(subscriber_id, entity_type, entity, number)
                           for entity, number in pairs])

        deliver.__name__ = f"{ACTOR_PREFIX}{subscriber_id}"
        return dramatiq.Actor(
            deliver,
            broker=self.broker,
            actor_name=f"{ACTOR_PREFIX}{subscriber_id}",
            queue_name=subscriber_id,
            priority=0,
            options=dict(self._actor_options),
        )

    def _deliver(self, notices: list[Notice]) -> None:
        try:
            if not notices:
                return
            handler = self._handlers.get((notices[0].entity_type, notices[0].subscriber_id))
            if handler is None:
                # A notice for a subscription this process does not know: most likely the
                # app dropped it. Nothing to do; the checkpoint stays where it was.
                return
            if self._deliverer is None:
                raise ConfigurationError("DramatiqEventBus is not bound to a Store")
            self._deliverer.deliver(notices, handler, self._resend)
        finally:
            if self.observer is not None:
                for notice in notices:
                    self.observer(notice)

    def _resend(self, notices: Sequence[Notice], delay_ms: int) -> None:
        first = notices[0]
        self._send(first.subscriber_id, first.entity_type,
                   [(n.entity_id, n.event_number) for n in notices], delay_ms)

    def _send(self, subscriber_id: str, entity_type: str,
              positions: Sequence[tuple[str, int | None]], delay_ms: int | None = None) -> None:
        self.broker.enqueue(self._message(subscriber_id, entity_type, positions),
                            delay=delay_ms)

    def _message(self, subscriber_id: str, entity_type: str,
                 positions: Sequence[tuple[str, int | None]]) -> dramatiq.Message[Any]:
        """One message naming the entities: positional arguments for one (as workers before
        many-entity notices read them), `entities` for several."""
        if len(positions) == 1:
            args: tuple[Any, ...] = (entity_type, *positions[0])
            kwargs: dict[str, Any] = {}
        else:
            args, kwargs = (entity_type,), {"entities": [list(p) for p in positions]}
        return self.actor(subscriber_id).message_with_options(args=args, kwargs=kwargs)

    def subscriber_ids(self, entity_type: str) -> list[str]:
        with self._lock:
            return [sub for (kind, sub) in self._handlers if kind == entity_type]

    def notify(
        self,
        entity_type: str,
        entity_id: str,
        event_number: int | None,
        subscriber_ids: Sequence[str] | None = None,
    ) -> None:
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        targets = self.subscriber_ids(entity_type) if subscriber_ids is None else subscriber_ids
        for subscriber_id in targets:
            self.actor(subscriber_id).send(entity_type, entity_id, event_number)

    def notify_many(
        self,
        entity_type: str,
        positions: Sequence[tuple[str, int | None]],
        subscriber_ids: Sequence[str] | None = None,
    ) -> None:
        """Messages of at most MAX_NOTICE_ENTITIES entities for many entities at once, the
        same for each subscriber: a partition's entities in as few messages as they fill,
        and partitions with fewer packed together (up to MAX_NOTICE_PARTITIONS; a worker
        begins a message's partitions together), so a round of a few events over many
        partitions is one message per subscriber, not one per partition (each message
        costs a worker ~1 ms of Dramatiq's fetch, dispatch and ack). On a
        WakingRedisBroker they are all enqueued in one round trip (`enqueue_many`)."""
        check_entity_type(entity_type)
        by_partition: dict[int, list[tuple[str, int | None]]] = {}
        for entity_id, event_number in positions:
            check_entity_id(entity_id)
            by_partition.setdefault(self._partition(entity_type, entity_id), []).append(
                (entity_id, event_number))
        groups = _packed([by_partition[p] for p in sorted(by_partition)])
        targets = self.subscriber_ids(entity_type) if subscriber_ids is None else subscriber_ids
        messages = [self._message(subscriber_id, entity_type, group)
                    for subscriber_id in targets for group in groups]
        if isinstance(self.broker, WakingRedisBroker):
            self.broker.enqueue_many(messages)  # one round trip, one wake-up per queue
        else:  # RabbitMQ, Dramatiq's own RedisBroker, a StubBroker: one at a time
            for message in messages:
                self.broker.enqueue(message)

    def declare_reset(self, subscriber_id: str, reset: ResetHook) -> None:
        with self._lock:
            self._resets[subscriber_id] = one_reset_hook(
                subscriber_id, self._resets.get(subscriber_id), reset)

    def reset_hook(self, subscriber_id: str) -> ResetHook | None:
        with self._lock:
            return self._resets.get(subscriber_id)

    def rebuild(self, subscriber_id: str, reset: Callable[[], None], *, timeout: float,
                pause_ms: int, progress: Callable[[int], None] | None = None) -> int:
        """Rebuilds the subscriber while workers run (see `workers.rebuild`)."""
        if self._storage is None:
            raise ConfigurationError("DramatiqEventBus is not bound to a Store")
        with self._lock:
            types = sorted({kind for (kind, sub) in self._handlers if sub == subscriber_id})
        return Rebuild(self._storage, self.notify_many, subscriber_id, types, pause_ms).run(
            reset, timeout, progress)

    def close(self) -> None:
        self.broker.close()


def _packed(partitions: list[list[tuple[str, int | None]]],
            size: int = MAX_NOTICE_ENTITIES, most: int = MAX_NOTICE_PARTITIONS,
            ) -> list[list[tuple[str, int | None]]]:
    """The partitions' entities in groups of at most `size` entities of at most `most`
    partitions: a partition's in full groups, then what is left of each packed with the next
    partitions' rests (never split: a new group starts when it does not fit)."""
    groups: list[list[tuple[str, int | None]]] = []
    packing: list[tuple[str, int | None]] = []
    packed = 0  # partitions in `packing`
    for entities in partitions:
        full = len(entities) - len(entities) % size
        groups += [entities[start : start + size] for start in range(0, full, size)]
        rest = entities[full:]
        if not rest:
            continue
        if len(packing) + len(rest) > size or packed == most:
            groups.append(packing)
            packing, packed = [], 0
        packing += rest
        packed += 1
    if packing:
        groups.append(packing)
    return groups


def _middleware(broker: dramatiq.Broker, kind: type[_M]) -> _M:
    """The broker's middleware of this kind, added if it has none (one per broker)."""
    for middleware in broker.middleware:
        if isinstance(middleware, kind):
            return middleware
    added = kind()
    broker.add_middleware(added)
    return added


def _on_dramatiq_loop(handler: Callable[[Event], Any]) -> Callable[[Event], None]:
    """The async handler run on the AsyncIO middleware's loop, in the actor thread's context
    (`event.awaited_in`), its outcome awaited by that thread.

    SystemExit and KeyboardInterrupt raised by the handler are carried to that thread and
    raised there (a failed attempt, as from a function): asyncio lets them out of the task,
    which would stop the loop of every async handler of the process."""
    run = async_to_sync(awaited_in)

    async def caught(event: Event) -> _Escaped | None:
        try:
            await handler(event)
        except (SystemExit, KeyboardInterrupt) as error:
            return _Escaped(error)
        return None

    def handle(event: Event) -> None:
        escaped = run(contextvars.copy_context(), caught, event)
        if escaped is not None:
            raise escaped.error

    return handle


class _Escaped:
    """What an async handler raised that must not leave its task (see _on_dramatiq_loop)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
