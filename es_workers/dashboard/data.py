"""What the dashboard shows, read from a Store: figures per entity type and subscriber, an
entity's events and how far each subscriber has handled them.

Delivery figures come from `es_workers.admin` (the same functions as `es-workers status`).
The two reads admin has no function for ask the storage (`event_count`: its heads) and the
owner of subscriber state (`checkpoint`).
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from es_workers import ConfigurationError, Event, RedisStorage
from es_workers.admin import ParkedEntity, StoreStatus, count_entities, parked, status
from es_workers.personal import redacted
from es_workers.store import Store

EVENTS_PER_PAGE = 100
_EXCEPTION_NAME = re.compile(r"[A-Za-z_][\w.]*")


def _redis(store: Store) -> RedisStorage:
    if not isinstance(store.storage, RedisStorage):
        raise ConfigurationError("the dashboard reads delivery state from a RedisStorage")
    return store.storage


def event_count(store: Store, entity_type: str) -> int:
    """Events stored for the entity type: the sum of its entities' heads."""
    return sum(_redis(store).heads(entity_type).values())


def checkpoint(store: Store, subscriber_id: str, entity_type: str, entity_id: str) -> int:
    """The last event number of the entity the subscriber has handled (0: none)."""
    state = _redis(store).state
    return state.checkpoint(state.entity(subscriber_id, entity_type, entity_id))


@dataclass(frozen=True)
class EntityTypeFigures:
    entity_type: str
    entities: int
    events: int


@dataclass(frozen=True)
class Overview:
    """One reading of the store: `es-workers status` plus entity and event counts."""

    taken_at: float  # seconds since the epoch
    status: StoreStatus
    entity_types: list[EntityTypeFigures]

    def events_of(self, entity_type: str) -> int:
        return next((f.events for f in self.entity_types if f.entity_type == entity_type), 0)

    def handled(self) -> dict[tuple[str, str], int]:
        """Events each (entity type, subscriber) has handled: events - events behind."""
        return {
            (sub.entity_type, sub.subscriber_id): self.events_of(sub.entity_type)
            - sub.events_behind
            for sub in self.status.subscribers
        }

    def parked(self) -> list[ParkedEntity]:
        return [item for sub in self.status.subscribers for item in sub.parked]

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "entity_types": [asdict(figures) for figures in self.entity_types],
            **self.status.to_dict(),
        }


def overview(store: Store) -> Overview:
    taken_at = time.time()
    figures = [
        EntityTypeFigures(entity_type, count_entities(store, entity_type),
                          event_count(store, entity_type))
        for entity_type in store.entity_types()
    ]
    return Overview(taken_at=taken_at, status=status(store), entity_types=figures)


def all_parked(store: Store) -> list[ParkedEntity]:
    """Every parked (subscriber, entity) of every entity type, oldest first."""
    items = [
        item
        for entity_type in store.entity_types()
        for subscriber_id in store.subscriber_ids(entity_type)
        for item in parked(store, subscriber_id, entity_type)
    ]
    return sorted(items, key=lambda item: (item.parked_at, item.subscriber_id, item.entity_id))


@dataclass(frozen=True)
class ErrorParts:
    exception_type: str
    message: str


def error_parts(error: str) -> ErrorParts:
    """Splits a parked entity's `error` ("ValueError: bad amount") into type and message."""
    name, separator, message = error.partition(": ")
    if separator and _EXCEPTION_NAME.fullmatch(name):
        return ErrorParts(name, message)
    return ErrorParts("", error)


def parked_dict(item: ParkedEntity) -> dict[str, Any]:
    """A parked entity as JSON, its error also split into exception type and message."""
    parts = error_parts(item.error)
    return {**asdict(item), "exception_type": parts.exception_type, "message": parts.message}


@dataclass(frozen=True)
class SubscriberProgress:
    """How far one subscriber has handled one entity."""

    subscriber_id: str
    checkpoint: int
    parked_at: int | None  # the event number it is parked at, if parked

    def handled(self, event_number: int) -> bool:
        return event_number <= self.checkpoint


@dataclass(frozen=True)
class EntityView:
    entity_type: str
    entity_id: str
    head: int  # the entity's last event number
    events: list[Event]  # one page, from event `after + 1`
    subscribers: list[SubscriberProgress]
    next_after: int | None  # `after` of the next page, None on the last page


def entity_view(
    store: Store, entity_type: str, entity_id: str, *, after: int = 0,
    limit: int = EVENTS_PER_PAGE,
) -> EntityView:
    """A page of the entity's events (upgraded, as subscribers see them) and, per
    subscriber of its type, its checkpoint and where it is parked."""
    storage = _redis(store)
    events = list(itertools.islice(store.read(entity_type, entity_id, after), limit))
    head = storage.position(entity_type, entity_id)
    last = events[-1].event_number if events else after
    subscribers = []
    for subscriber_id in store.subscriber_ids(entity_type):
        stuck = [
            item.event_number for item in parked(store, subscriber_id, entity_type)
            if item.entity_id == entity_id
        ]
        subscribers.append(SubscriberProgress(
            subscriber_id=subscriber_id,
            checkpoint=checkpoint(store, subscriber_id, entity_type, entity_id),
            parked_at=stuck[0] if stuck else None,
        ))
    return EntityView(
        entity_type=entity_type, entity_id=entity_id, head=head, events=events,
        subscribers=subscribers, next_after=last if last < head else None,
    )


# Event fields that DESIGN.md promises and the Event class may not have yet: shown if present.
_LATER_FIELDS = ("metadata", "correlation_id", "causation_id")


def event_dict(event: Event) -> dict[str, Any]:
    later = {name: getattr(event, name) for name in _LATER_FIELDS if hasattr(event, name)}
    if "metadata" in later:
        later["metadata"] = dict(later["metadata"])
    return {
        "event_number": event.event_number,
        "event_name": event.content.event_name,
        "event_time": event.event_time.isoformat(),
        "store_event_id": event.store_event_id,
        "store_entity_id": event.store_entity_id,
        **later,
        # Personal fields are never shown: a dashboard is looked at over shoulders.
        "content": redacted(event.content),
        "forgotten": event.forgotten,
    }


def entity_dict(view: EntityView) -> dict[str, Any]:
    return {
        "entity_type": view.entity_type,
        "entity_id": view.entity_id,
        "head": view.head,
        "next_after": view.next_after,
        "subscribers": [asdict(progress) for progress in view.subscribers],
        "events": [
            {
                **event_dict(event),
                "handled_by": {
                    progress.subscriber_id: progress.handled(event.event_number)
                    for progress in view.subscribers
                },
            }
            for event in view.events
        ],
    }
