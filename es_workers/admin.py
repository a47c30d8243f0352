"""Operations on delivery state: status, parked entities, rebuild, replay. Used by
`es-workers` and the dashboard. Subscriber state itself is `es_workers.redis.state`'s to
read and write."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from .errors import ConfigurationError, StorageUnavailableError, UnknownNameError
from .names import check_entity_id
from .names import check_entity_type as check_entity_type_name
from .ports import NotifyingEventBus, RebuildRecord
from .redis.cluster import spread_warning
from .redis.failures import translated
from .redis.footprint import Footprint
from .redis.recorder_archiver import archive_label, recorded_lag, registered_applications
from .redis.state import ParkedEntity, SubscriberState
from .redis.storage import RedisStorage
from .removal import REMOVED_TYPE
from .retention import HotWindow
from .store import Store
from .wiring import recorded_archive

__all__ = [
    "Footprint",
    "ParkedEntity",
    "RebuildRecord",
    "StoreStatus",
    "SubscriberStatus",
    "check_entity_type",
    "check_subscriber",
    "count_entities",
    "parked",
    "rebuild",
    "replay",
    "retry_parked",
    "skip_parked",
    "status",
]


@dataclass(frozen=True)
class SubscriberStatus:
    entity_type: str
    subscriber_id: str
    caught_up: bool  # has been handed the entity type's history
    lagging_entities: int  # entities whose last event it has not handled yet
    events_behind: int
    parked: list[ParkedEntity] = field(default_factory=list)
    paused: bool = False  # a rebuild holds it: workers begin none of its entities
    # A rebuild that started it over and has not finished: running if `paused`, else it
    # died halfway (run it again).
    rebuild: RebuildRecord | None = None
    # Events it could not get: removed (truncated, scavenged) before it handled them, e.g.
    # as it was added after the scavenger ran (it started at the first kept event).
    missed_events: int = 0


@dataclass(frozen=True)
class ArchiveStatus:
    """One entity type's events in Redis and in the archive (with ES_ARCHIVE_URL), or one
    eventsourcing application's aggregate events (`entity_type` `eventsourcing:<name>`,
    counted by versions, with no lag age)."""

    entity_type: str
    events: int  # every event written (the entities' heads)
    archived_marked: int  # events marked archived (the scavenger may remove them from Redis)
    lag: int  # events past the hot window not archived yet
    archived_events: int | None  # rows in the archive (None: it could not be reached)
    archived_bytes: int | None  # their JSON data
    error: str | None = None  # why the archive could not be counted
    lag_age_s: float | None = None  # how long ago the oldest of the lag was written


@dataclass(frozen=True)
class StoreStatus:
    outbox_backlog: int  # appended batches not yet relayed by a publisher
    subscribers: list[SubscriberStatus]
    warnings: list[str] = field(default_factory=list)  # e.g. masters a prefix leaves unused
    archive: list[ArchiveStatus] = field(default_factory=list)  # with an archive only
    # Per entity type: estimated memory, what a scavenge would free, deletes and tombstones.
    footprints: list[Footprint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


P = ParamSpec("P")
R = TypeVar("R")


def _reaching_redis(
    function: Callable[Concatenate[Store, P], R],
) -> Callable[Concatenate[Store, P], R]:
    """Redis failures during the operation raise StorageUnavailableError (one clear line in
    the CLI), as every store call does."""

    @functools.wraps(function)
    def operation(store: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with translated(_redis(store).server, function.__name__.replace("_", " ")):
            return function(store, *args, **kwargs)

    return operation


def _redis(store: Store) -> RedisStorage:
    if not isinstance(store.storage, RedisStorage):
        raise ConfigurationError("delivery state is kept in Redis: the store needs a RedisStorage")
    return store.storage


def _state(store: Store) -> SubscriberState:
    return _redis(store).state


def _notifying(store: Store) -> NotifyingEventBus:
    if not isinstance(store.bus, NotifyingEventBus):
        raise ConfigurationError("re-delivery needs a bus of subscriber actors (DramatiqEventBus)")
    return store.bus


def check_entity_type(store: Store, entity_type: str) -> None:
    """Raises UnknownNameError, naming the app's entity types, if it has no `entity_type`."""
    check_entity_type_name(entity_type)
    known = store.entity_types()
    if entity_type not in known:
        raise UnknownNameError(
            f"unknown entity type {entity_type!r}: this app has {_listed(known)}"
        )


def check_subscriber(store: Store, subscriber_id: str, entity_type: str | None = None) -> None:
    """Raises UnknownNameError, naming the known subscribers, if `subscriber_id` is not
    registered (for `entity_type`, or for any type when None)."""
    if entity_type is not None:
        check_entity_type(store, entity_type)
    types = [entity_type] if entity_type is not None else store.entity_types()
    known = sorted({s for kind in types for s in store.subscriber_ids(kind)})
    if subscriber_id not in known:
        where = f"for {entity_type!r}" if entity_type is not None else "in this app"
        raise UnknownNameError(
            f"subscriber {subscriber_id!r} is not registered {where}: known subscribers "
            f"{_listed(known)}"
        )


def _listed(names: list[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names)) or "none"


@_reaching_redis
def parked(store: Store, subscriber_id: str, entity_type: str) -> list[ParkedEntity]:
    """Entities parked for the subscriber: a handler kept failing on `event_number`."""
    check_subscriber(store, subscriber_id, entity_type)
    return _state(store).parked(subscriber_id, entity_type)


@_reaching_redis
def status(store: Store) -> StoreStatus:
    """Backlog of the outbox, and per subscriber: lag and parked entities."""
    storage = _redis(store)
    state = storage.state
    subscribers = []
    rebuilds: dict[str, tuple[bool, RebuildRecord | None]] = {}
    for entity_type in store.entity_types():
        heads = storage.heads(entity_type)
        for subscriber_id in store.subscriber_ids(entity_type):
            if subscriber_id not in rebuilds:
                rebuilds[subscriber_id] = (state.paused_by(subscriber_id) is not None,
                                           state.rebuild_record(subscriber_id))
            paused, rebuild = rebuilds[subscriber_id]
            done = state.checkpoints(subscriber_id, entity_type)
            behind = [head - done.get(entity_id, 0) for entity_id, head in heads.items()]
            subscribers.append(
                SubscriberStatus(
                    entity_type=entity_type,
                    subscriber_id=subscriber_id,
                    caught_up=state.is_caught_up(entity_type, subscriber_id),
                    lagging_entities=sum(1 for lag in behind if lag > 0),
                    events_behind=sum(lag for lag in behind if lag > 0),
                    parked=state.parked(subscriber_id, entity_type),
                    paused=paused,
                    rebuild=rebuild,
                    missed_events=state.missed(subscriber_id, entity_type),
                )
            )
    warning = spread_warning(storage.client, storage.keys)
    return StoreStatus(
        outbox_backlog=storage.outbox_backlog(),
        subscribers=subscribers,
        warnings=[warning] if warning else [],
        archive=archive_status(store),
        footprints=[
            replace(storage.footprint(entity_type, store.subscriber_ids(entity_type)),
                    removals=storage.position(REMOVED_TYPE, entity_type))
            for entity_type in store.entity_types()
        ],
    )


def archive_status(store: Store) -> list[ArchiveStatus]:
    """Per entity type: events written, marked archived, past the hot window and not
    archived yet, and the archive's own counts (None, with the error, if unreachable); then
    the same per eventsourcing application under the prefix (`eventsourcing:<name>`)."""
    storage = _redis(store)
    if storage.archive is None:
        return []
    counts, error = _archive_counts(storage.archive.counts)
    found = []
    now_us = time.time_ns() // 1000
    for entity_type in store.entity_types():
        window = store.hot_windows.get(entity_type, HotWindow()).over(storage.hot_window)
        heads, marks = storage.heads(entity_type), storage.archived_marks(entity_type)
        lag = storage.archive_lag(entity_type, window, heads=heads, marks=marks)
        stored = counts.get(entity_type, (0, 0)) if counts is not None else None
        found.append(ArchiveStatus(
            entity_type, sum(heads.values()), sum(marks.values()), lag.events,
            stored[0] if stored else None, stored[1] if stored else None, error,
            lag.age_s(now_us)))
    return found + _applications_archive(storage, error)


def _applications_archive(storage: RedisStorage, unreachable: str | None) -> list[ArchiveStatus]:
    """The eventsourcing applications' rows (es_workers.eventsourcing, archived by
    `es-workers archive` into their own table beside the app's): their aggregates' events
    in Redis, and the archive's counts unless it was `unreachable` just now (the same
    PostgreSQL: not waited for twice). No lag age: Redis keeps no time of a stored event."""
    applications = registered_applications(storage.client, storage.keys.prefix)
    archive = recorded_archive(storage.archive)
    if not applications or archive is None:  # none, or not archived (no PostgresArchive)
        return []
    # A missing table is an error of the row, not of the status: the first `es-workers
    # archive` that archives applications makes it.
    counts, error = (None, unreachable) if unreachable else _archive_counts(
        archive.counts, (StorageUnavailableError, ConfigurationError))
    found = []
    for application in applications:
        lag = recorded_lag(storage.client, storage.keys.prefix, application,
                           storage.hot_window.events)
        stored = counts.get(application, (0, 0)) if counts is not None else None
        found.append(ArchiveStatus(
            archive_label(application), lag.events, lag.archived_marked, lag.lag,
            stored[0] if stored else None, stored[1] if stored else None, error))
    return found


def _archive_counts(
    counts: Callable[[], dict[str, tuple[int, int]]],
    failures: tuple[type[Exception], ...] = (StorageUnavailableError,),
) -> tuple[dict[str, tuple[int, int]] | None, str | None]:
    """An archive's counts, or None and why it could not be counted (`failures`: the rest
    of the status still shows)."""
    try:
        return counts(), None
    except failures as failure:
        return None, str(failure)


def _unpark(
    store: Store, subscriber_id: str, entity_type: str, entity_id: str, *, skip: bool
) -> ParkedEntity:
    state = _state(store)
    bus = _notifying(store)
    check_subscriber(store, subscriber_id, entity_type)
    check_entity_id(entity_id)
    entity = state.unpark(state.entity(subscriber_id, entity_type, entity_id), skip=skip)
    bus.notify(entity_type, entity_id, None, [subscriber_id])
    return entity


@_reaching_redis
def retry_parked(
    store: Store, subscriber_id: str, entity_type: str, entity_id: str
) -> ParkedEntity:
    """Unparks the entity and delivers again from the event that failed."""
    return _unpark(store, subscriber_id, entity_type, entity_id, skip=False)


@_reaching_redis
def skip_parked(
    store: Store, subscriber_id: str, entity_type: str, entity_id: str
) -> ParkedEntity:
    """Marks the failing event handled without handling it, then delivers the rest."""
    return _unpark(store, subscriber_id, entity_type, entity_id, skip=True)


@_reaching_redis
def count_entities(store: Store, entity_type: str) -> int:
    return _redis(store).count_entities(entity_type)


@_reaching_redis
def rebuild(store: Store, subscriber_id: str, *, timeout: float = 60.0,
            progress: Callable[[int], None] | None = None) -> int:
    """`store.rebuild(subscriber_id)`: pause, wait for running handlers, start over, reset
    hook, whole history, resume (see `Store.rebuild`). Returns the entities handed over."""
    check_subscriber(store, subscriber_id)
    return store.rebuild(subscriber_id, timeout=timeout, progress=progress)


@_reaching_redis
def replay(
    store: Store,
    subscriber_id: str,
    entity_type: str | None = None,
    progress: Callable[[int], None] | None = None,
    page_size: int = 500,
) -> int:
    """Delivers a subscriber's history again: forgets its checkpoints, failures and parked
    entities, then sends it a notice for every entity. Returns the entities re-sent.

    To rebuild a read model use `rebuild`: clearing it and then replaying races with the
    workers (a handler in flight, a live event handled on the cleared model before its
    history), and leaves it wrong without a word.
    """
    storage = _redis(store)
    state = storage.state
    bus = _notifying(store)
    check_subscriber(store, subscriber_id, entity_type)
    types = [entity_type] if entity_type else [
        t for t in store.entity_types() if subscriber_id in store.subscriber_ids(t)
    ]
    sent = 0
    for kind in types:
        state.forget(subscriber_id, kind)
        token: str | None = None
        while True:
            ids, token = storage.entity_ids(kind, token, page_size)
            state.mark_due(state.entity(subscriber_id, kind, entity_id) for entity_id in ids)
            for entity_id in ids:
                bus.notify(kind, entity_id, None, [subscriber_id])
            sent += len(ids)
            if progress is not None:
                progress(sent)
            if token is None:
                break
    return sent
