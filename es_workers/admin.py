"""Operations on delivery state: status, parked entities, replay. Used by `es-workers`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .bus.base import NotifyingEventBus
from .delivery import DeliveryOptions, mark_due
from .errors import ConfigurationError, NotParkedError
from .event import check_entity_id, check_entity_type
from .storage.redis import RedisStorage, text
from .store import Store


@dataclass(frozen=True)
class ParkedEntity:
    subscriber_id: str
    entity_type: str
    entity_id: str
    event_number: int
    error: str
    attempts: int
    parked_at: str


@dataclass(frozen=True)
class SubscriberStatus:
    entity_type: str
    subscriber_id: str
    caught_up: bool  # has been handed the entity type's history
    lagging_entities: int  # entities whose last event it has not handled yet
    events_behind: int
    parked: list[ParkedEntity] = field(default_factory=list)


@dataclass(frozen=True)
class StoreStatus:
    outbox_backlog: int  # appended batches not yet relayed by a publisher
    subscribers: list[SubscriberStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _redis(store: Store) -> RedisStorage:
    if not isinstance(store.storage, RedisStorage):
        raise ConfigurationError("delivery state is kept in Redis: the store needs a RedisStorage")
    return store.storage


def _notifying(store: Store) -> NotifyingEventBus:
    if not isinstance(store.bus, NotifyingEventBus):
        raise ConfigurationError("re-delivery needs a bus of subscriber actors (DramatiqEventBus)")
    return store.bus


def _due_at(bus: NotifyingEventBus) -> float:
    """When a notice sent now is re-sent by the sweep if it was lost."""
    options = getattr(bus, "options", None)
    if not isinstance(options, DeliveryOptions):
        options = DeliveryOptions()
    return time.time() * 1000 + options.redrive_after_ms


def _parked_entity(subscriber_id: str, entity_type: str, entity_id: str, raw: Any) -> ParkedEntity:
    record = json.loads(text(raw))
    return ParkedEntity(
        subscriber_id=subscriber_id,
        entity_type=entity_type,
        entity_id=entity_id,
        event_number=int(record["event_number"]),
        error=str(record["error"]),
        attempts=int(record["attempts"]),
        parked_at=str(record["parked_at"]),
    )


def parked(store: Store, subscriber_id: str, entity_type: str) -> list[ParkedEntity]:
    """Entities parked for the subscriber: a handler kept failing on `event_number`."""
    storage = _redis(store)
    pipe = storage.client.pipeline(transaction=False)
    for partition in range(storage.partitions):
        pipe.hgetall(storage.keys.parked(subscriber_id, entity_type, partition))
    return sorted(
        (
            _parked_entity(subscriber_id, entity_type, text(entity_id), raw)
            for records in pipe.execute()
            for entity_id, raw in records.items()
        ),
        key=lambda item: (item.parked_at, item.entity_id),
    )


def status(store: Store) -> StoreStatus:
    """Backlog of the outbox, and per subscriber: lag and parked entities."""
    storage = _redis(store)
    keys, client = storage.keys, storage.client
    pipe = client.pipeline(transaction=False)
    for partition in range(storage.partitions):
        pipe.xlen(keys.outbox(partition))
    backlog = sum(int(n) for n in pipe.execute())
    subscribers = []
    for entity_type in store.entity_types():
        pipe = client.pipeline(transaction=False)
        for partition in range(storage.partitions):
            pipe.hgetall(keys.heads(entity_type, partition))
        heads = {text(k): int(v) for page in pipe.execute() for k, v in page.items()}
        for subscriber_id in store.subscriber_ids(entity_type):
            pipe = client.pipeline(transaction=False)
            for partition in range(storage.partitions):
                pipe.hgetall(keys.checkpoints(subscriber_id, entity_type, partition))
            done = {text(k): int(v) for page in pipe.execute() for k, v in page.items()}
            behind = [head - done.get(entity_id, 0) for entity_id, head in heads.items()]
            subscribers.append(
                SubscriberStatus(
                    entity_type=entity_type,
                    subscriber_id=subscriber_id,
                    caught_up=bool(client.sismember(keys.caught_up(entity_type), subscriber_id)),
                    lagging_entities=sum(1 for lag in behind if lag > 0),
                    events_behind=sum(lag for lag in behind if lag > 0),
                    parked=parked(store, subscriber_id, entity_type),
                )
            )
    return StoreStatus(outbox_backlog=backlog, subscribers=subscribers)


def _unpark(
    store: Store, subscriber_id: str, entity_type: str, entity_id: str, *, skip: bool
) -> ParkedEntity:
    storage = _redis(store)
    bus = _notifying(store)
    check_entity_type(entity_type)
    check_entity_id(entity_id)
    keys, client = storage.keys, storage.client
    partition = keys.partition(entity_type, entity_id)
    parked_key = keys.parked(subscriber_id, entity_type, partition)
    raw = client.hget(parked_key, entity_id)
    if raw is None:
        raise NotParkedError(
            f"{entity_type} {entity_id!r} is not parked for subscriber {subscriber_id!r}"
        )
    entity = _parked_entity(subscriber_id, entity_type, entity_id, raw)
    pipe = client.pipeline(transaction=True)
    if skip:
        pipe.hset(
            keys.checkpoints(subscriber_id, entity_type, partition), entity_id, entity.event_number
        )
    pipe.hdel(keys.failures(subscriber_id, entity_type, partition), entity_id)
    pipe.hdel(parked_key, entity_id)
    pipe.execute()
    mark_due(client, keys, subscriber_id, entity_type, [entity_id], _due_at(bus))
    bus.notify(entity_type, entity_id, None, [subscriber_id])
    return entity


def retry_parked(
    store: Store, subscriber_id: str, entity_type: str, entity_id: str
) -> ParkedEntity:
    """Unparks the entity and delivers again from the event that failed."""
    return _unpark(store, subscriber_id, entity_type, entity_id, skip=False)


def skip_parked(
    store: Store, subscriber_id: str, entity_type: str, entity_id: str
) -> ParkedEntity:
    """Marks the failing event handled without handling it, then delivers the rest."""
    return _unpark(store, subscriber_id, entity_type, entity_id, skip=True)


def count_entities(store: Store, entity_type: str) -> int:
    storage = _redis(store)
    pipe = storage.client.pipeline(transaction=False)
    for partition in range(storage.partitions):
        pipe.zcard(storage.keys.index(entity_type, partition))
    return sum(int(n) for n in pipe.execute())


def replay(
    store: Store,
    subscriber_id: str,
    entity_type: str | None = None,
    progress: Callable[[int], None] | None = None,
    page_size: int = 500,
) -> int:
    """Rebuilds a subscriber from history: forgets its checkpoints, failures and parked
    entities, then sends it a notice for every entity. Returns the entities re-sent.

    Run it with the subscriber's read model cleared; workers may keep running (a worker in
    the middle of an entity may finish it on its old checkpoint: stop workers first for an
    exact rebuild).
    """
    storage = _redis(store)
    bus = _notifying(store)
    keys, client = storage.keys, storage.client
    types = [entity_type] if entity_type else [
        t for t in store.entity_types() if subscriber_id in store.subscriber_ids(t)
    ]
    if not types:
        raise ConfigurationError(f"subscriber {subscriber_id!r} is not registered in this app")
    sent = 0
    for kind in types:
        check_entity_type(kind)
        pipe = client.pipeline(transaction=False)
        for partition in range(storage.partitions):
            pipe.delete(
                keys.checkpoints(subscriber_id, kind, partition),
                keys.failures(subscriber_id, kind, partition),
                keys.parked(subscriber_id, kind, partition),
            )
        pipe.execute()
        token: str | None = None
        while True:
            ids, token = storage.entity_ids(kind, token, page_size)
            mark_due(client, keys, subscriber_id, kind, ids, _due_at(bus))
            for entity_id in ids:
                bus.notify(kind, entity_id, None, [subscriber_id])
            sent += len(ids)
            if progress is not None:
                progress(sent)
            if token is None:
                break
    return sent
