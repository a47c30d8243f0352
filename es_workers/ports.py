"""The ports: what a storage and a bus must do. Backends implement them; the Store and the
Stream use nothing else.

The ladder of abilities: every `Storage` reads, writes and pages entity IDs, and has a
publishing hook that relays new events to a bus. A `NotifyingEventBus` (Dramatiq
subscribers) is only told which entity moved and reads the events itself, keeping its
checkpoints in a storage that can hold them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Protocol, TypeAlias, runtime_checkable

from .errors import ConfigurationError
from .event import Content, Event, Handler
from .names import check_rebuildable
from .position import Position
from .retention import Retention, Scavenged
from .snapshot import StoredSnapshot
from .upgrade import Reader


@runtime_checkable
class Subscriptions(Protocol):
    """What every bus does: keep the subscribers of each entity type."""

    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler) -> None:
        """Runs `handler` for each event of the entity type, as the named subscriber."""
        ...

    def subscriber_ids(self, entity_type: str) -> list[str]:
        """The IDs of the entity type's subscribers."""
        ...

    def close(self) -> None:
        """Releases what the bus holds (connections, threads)."""
        ...


@runtime_checkable
class EventBus(Subscriptions, Protocol):
    """A bus that is handed the events (the in-memory bus, as in the Go library)."""

    def write(self, entity_type: str, events: Iterable[Event]) -> None:
        """Delivers the events to every subscriber of the entity type."""
        ...

    def write_to(
        self, entity_type: str, events: Iterable[Event], subscriber_ids: Sequence[str]
    ) -> None:
        """Delivers the events to the named subscribers only."""
        ...


@runtime_checkable
class Storage(Protocol):
    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Iterator[Event]:
        """Events of one entity with `event_number > after`, in order, as stored."""
        ...

    def write(self, entity_type: str, events: Sequence[Event]) -> Sequence[Position] | None:
        """Appends events of one entity, all or none, and returns their log positions
        (None or empty from a storage without a log).

        `events[0].event_number - 1` is the expected position: if the entity is elsewhere,
        `ConcurrencyError`. Writing the same events again (same `store_event_id`s) at the
        same numbers succeeds without storing them twice (and returns the same positions).
        """
        ...

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        """Declares the Content classes the entity type may hold; writes of others fail."""
        ...

    def entity_types(self) -> list[str]:
        """The entity types registered so far."""
        ...

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of entity IDs ordered by `store_entity_id`, and the token of the next page
        (None on the last page). Pass the token as `after`."""
        ...

    def start_publish(self, bus: Bus, reader: Reader, stop: threading.Event, *,
                      logger: logging.Logger | None = None) -> None:
        """The publishing hook: relays newly written events to the bus until `stop` is set
        (blocking). A bus that takes events is handed them through `reader` (upgraded).
        `logger`: where the hook's records go (the Store's logger; None: the storage's
        own)."""
        ...

    def close(self) -> None:
        """Releases the storage's connections."""
        ...


@runtime_checkable
class LogStorage(Storage, Protocol):
    """A storage that also keeps a log per partition, in commit order (RedisStorage and
    InMemoryStorage): what `Store.read_all` and `Store.follow` read."""

    @property
    def partitions(self) -> int:
        """How many partitions (logs) the store has."""
        ...

    def read_log(self, partition: int, after: int = 0,
                 entity_types: Collection[str] | None = None) -> Iterator[Event]:
        """The stored events of the partition's log after log number `after`, in order;
        `TruncatedError` where it was trimmed."""
        ...

    def log_entry(self, position: Position) -> tuple[str, str, int] | None:
        """(entity type, entity ID, event number) at the position; None if there is none."""
        ...

    def wait_log(self, after: Mapping[int, int], timeout: float) -> None:
        """Returns when a log holds an entry past `after` (partition -> log number), or
        after `timeout` seconds."""
        ...

    def followed(self, name: str) -> dict[int, int]:
        """The log numbers the named follower has done, per partition."""
        ...

    def record_followed(self, name: str, done: Mapping[int, int]) -> None:
        """Records the log numbers the named follower has done, per partition."""
        ...

    def trim_logs(self, keep: int | None = None, keep_for_ms: int | None = None) -> int:
        """Keeps at least each log's last `keep` events or those of its last `keep_for_ms`
        milliseconds (by event time), and what a follower has not done (on Redis the whole
        write that holds the first kept); returns how many log entries it removed."""
        ...


@runtime_checkable
class SnapshotStorage(Protocol):
    """A storage that keeps snapshots beside its entities (`Store.save_snapshot`): never in
    an entity's stream, its outbox or its log."""

    def save_snapshot(self, entity_type: str, entity_id: str, snapshot: StoredSnapshot) -> None:
        """Keeps the snapshot as the entity's one of its state class, unless one of the same
        version after a later event is there; `SnapshotError` if its event is not stored
        (beyond the head, or removed)."""
        ...

    def load_snapshot(self, entity_type: str, entity_id: str,
                      name: str) -> tuple[StoredSnapshot, datetime] | None:
        """The entity's snapshot of the state class `name`, with the time of its event."""
        ...


@runtime_checkable
class AsyncSnapshotStorage(Protocol):
    """`SnapshotStorage`, awaited."""

    async def save_snapshot(self, entity_type: str, entity_id: str,
                            snapshot: StoredSnapshot) -> None: ...

    async def load_snapshot(self, entity_type: str, entity_id: str,
                            name: str) -> tuple[StoredSnapshot, datetime] | None: ...


@runtime_checkable
class RetainingStorage(Protocol):
    """A storage that can stop keeping an entity's oldest events (`Store.truncate_before`)."""

    def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        """Reads from before `event_number` raise TruncatedError from now on; the numbering
        and the head are untouched. Returns the first kept event number (never moves
        back); ValueError beyond the head + 1."""
        ...

    def tombstone(self, entity_type: str, entity_id: str) -> int:
        """The entity is gone for good: reads and writes raise StreamDeletedError (checked
        where the append is), it leaves `entity_ids`, its snapshots are deleted; its stored
        events stay until every subscriber handled them. Returns the entity's head, -1 when
        it was tombstoned already."""
        ...

    def delete(self, entity_type: str, entity_id: str) -> int:
        """Soft delete: reads see no events (a read from before them goes on after them,
        see `upgrade.StoredEvents`), it leaves `entity_ids` until written again, after its
        old numbers; its snapshots are deleted, its stored events stay until every
        subscriber handled them. Returns the entity's head, -1 when there was nothing to
        delete (no events, or tombstoned)."""
        ...

    def retain(self, entity_type: str, retention: Retention) -> None:
        """Declares the entity type's retention limits (as `register` declares its
        Content classes): the scavenger applies them."""
        ...

    def scavenge(self, subscribers: Mapping[str, Sequence[str]]) -> Scavenged:
        """Applies the retention limits as truncations and removes the events before each
        truncation that every subscriber (entity type -> subscriber IDs, and any the
        storage knows of itself) has handled, in bounded steps. Returns what it removed."""
        ...


@runtime_checkable
class AsyncRetainingStorage(Protocol):
    """`RetainingStorage`, awaited."""

    async def truncate_before(self, entity_type: str, entity_id: str,
                              event_number: int) -> int: ...

    async def tombstone(self, entity_type: str, entity_id: str) -> int: ...

    async def delete(self, entity_type: str, entity_id: str) -> int: ...


@runtime_checkable
class AsyncStorage(Protocol):
    """`Storage` for asyncio (`AsyncStore`): the same reads and writes, awaited. It has no
    publishing hook: a `Store` on the same data relays what it appends."""

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> AsyncIterator[Event]:
        """Events of one entity with `event_number > after`, in order, as stored."""
        ...

    async def write(
        self, entity_type: str, events: Sequence[Event]
    ) -> Sequence[Position] | None:
        """Appends events of one entity, all or none, as `Storage.write`."""
        ...

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        """Declares the Content classes the entity type may hold, as `Storage.register`."""
        ...

    def entity_types(self) -> list[str]:
        """The entity types registered."""
        ...

    async def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of the entity type's IDs after `after`, and the cursor of the next page
        (None at the end), as `Storage.entity_ids`."""
        ...

    async def close(self) -> None:
        """Releases the storage's connections."""
        ...


@runtime_checkable
class AsyncLogStorage(AsyncStorage, Protocol):
    """`LogStorage` for asyncio (AsyncRedisStorage, AsyncInMemoryStorage): the same log,
    awaited. `partitions_count()` is awaited (Redis holds the number)."""

    async def partitions_count(self) -> int:
        """How many partitions (logs) the store has."""
        ...

    def read_log(self, partition: int, after: int = 0,
                 entity_types: Collection[str] | None = None) -> AsyncIterator[Event]:
        """As `LogStorage.read_log`."""
        ...

    async def log_entry(self, position: Position) -> tuple[str, str, int] | None:
        """As `LogStorage.log_entry`."""
        ...

    async def wait_log(self, after: Mapping[int, int], timeout: float) -> None:
        """As `LogStorage.wait_log`."""
        ...

    async def followed(self, name: str) -> dict[int, int]:
        """As `LogStorage.followed`."""
        ...

    async def record_followed(self, name: str, done: Mapping[int, int]) -> None:
        """As `LogStorage.record_followed`."""
        ...


@runtime_checkable
class NotifyingEventBus(Subscriptions, Protocol):
    """A bus whose subscribers read the events themselves from storage.

    The publisher then only says "entity X has events up to N" (`notify`), and each
    subscriber reads what it has not handled yet: that keeps order per entity and skips
    duplicates whatever order the notices arrive in.
    """

    def bind(self, reader: Reader, storage: Storage) -> None:
        """Called by the Store it is given to: subscribers read through `reader` and keep
        their checkpoints in `storage` (a bus may refuse a storage that cannot)."""
        ...

    def notify(
        self,
        entity_type: str,
        entity_id: str,
        event_number: int | None,
        subscriber_ids: Sequence[str] | None = None,
    ) -> None:
        """Tells subscribers (all of the type when None) that the entity has events up to
        `event_number` (None: up to its head)."""
        ...

    def notify_many(
        self,
        entity_type: str,
        positions: Sequence[tuple[str, int | None]],
        subscriber_ids: Sequence[str] | None = None,
    ) -> None:
        """`notify` for each (entity ID, event number) of `positions`, in as few messages
        as the bus can."""
        ...


Bus: TypeAlias = EventBus | NotifyingEventBus

ResetHook: TypeAlias = Callable[[], object]
"""Declared with a subscriber (`store.subscribe(..., reset=hook)`): clears its read model,
called by a rebuild while none of its handlers runs. It may be an `async def`."""


@runtime_checkable
class Rebuilding(Protocol):
    """A bus that can rebuild a subscriber while the app runs (`Store.rebuild`): pause it,
    wait for its running handlers, start it over, reset its read model, hand it the whole
    history, resume. Bound, like a NotifyingEventBus, to the Store whose history it hands."""

    def bind(self, reader: Reader, storage: Storage) -> None: ...

    def declare_reset(self, subscriber_id: str, reset: ResetHook) -> None:
        """Records the subscriber's reset hook (one per subscriber)."""
        ...

    def reset_hook(self, subscriber_id: str) -> ResetHook | None:
        """The subscriber's reset hook, or None."""
        ...

    def rebuild(self, subscriber_id: str, reset: Callable[[], None], *, timeout: float,
                pause_ms: int, progress: Callable[[int], None] | None) -> int:
        """Rebuilds the subscriber, calling `reset` (its hook, ready to call) once none of
        its handlers runs; returns the entities handed over again. Raises RebuildError."""
        ...


@runtime_checkable
class Progress(Protocol):
    """Knows how far subscribers got: what `Store.wait_for` asks. The in-memory bus is one;
    Redis subscriber state (`RedisStorage.state`) is the one of Dramatiq subscribers."""

    def wait_handled(self, subscriber_ids: Sequence[str], entity_type: str, entity_id: str,
                     event_number: int, timeout: float) -> None:
        """Returns once each subscriber has handled the entity up to `event_number`; raises
        `WaitTimeoutError` (naming those behind) or `ParkedError`."""
        ...


def snapshot_storage(storage: object) -> SnapshotStorage:
    """The storage, if it keeps snapshots (ConfigurationError otherwise)."""
    if not isinstance(storage, SnapshotStorage):
        raise ConfigurationError(f"{type(storage).__name__} keeps no snapshots: use "
                                 "RedisStorage or InMemoryStorage")
    return storage


def async_snapshot_storage(storage: object) -> AsyncSnapshotStorage:
    """The async storage, if it keeps snapshots (ConfigurationError otherwise)."""
    if not isinstance(storage, AsyncSnapshotStorage):
        raise ConfigurationError(f"{type(storage).__name__} keeps no snapshots: use "
                                 "AsyncRedisStorage or AsyncInMemoryStorage")
    return storage


def retaining_storage(storage: object) -> RetainingStorage:
    """The storage, if it can truncate entities (ConfigurationError otherwise)."""
    if not isinstance(storage, RetainingStorage):
        raise ConfigurationError(f"{type(storage).__name__} cannot truncate entities: use "
                                 "RedisStorage or InMemoryStorage")
    return storage


def async_retaining_storage(storage: object) -> AsyncRetainingStorage:
    """The async storage, if it can truncate entities (ConfigurationError otherwise)."""
    if not isinstance(storage, AsyncRetainingStorage):
        raise ConfigurationError(f"{type(storage).__name__} cannot truncate entities: use "
                                 "AsyncRedisStorage or AsyncInMemoryStorage")
    return storage


def rebuilding(bus: Bus) -> Rebuilding:
    """The bus, if it can rebuild subscribers (ConfigurationError otherwise)."""
    if not isinstance(bus, Rebuilding):
        raise ConfigurationError(
            f"rebuilding needs a bus that can pause its subscribers (InMemoryEventBus, "
            f"DramatiqEventBus), not {type(bus).__name__}"
        )
    return bus


def check_rebuild(bus: Rebuilding, entity_types: list[str],
                  subscriber_ids: Callable[[str], list[str]], subscriber_id: str) -> ResetHook:
    """The subscriber's reset hook; UnknownNameError or ConfigurationError if it has none."""
    known = sorted({s for entity_type in entity_types for s in subscriber_ids(entity_type)})
    return check_rebuildable(subscriber_id, known, bus.reset_hook(subscriber_id))

