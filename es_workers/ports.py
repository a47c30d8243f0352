"""The ports: what a storage and a bus must do. Backends implement them; the Store, the
Stream and the workers use nothing else.

The ladder of abilities: every `Storage` reads, writes and pages entity IDs, and has a
publishing hook that relays new events to a bus. A `NotifyingEventBus` (Dramatiq
subscribers) is only told which entity moved and reads the events itself, keeping its
checkpoints in a storage that can hold them: a `SubscriberStorage`, whose
`SubscriberState` (locks, checkpoints, failures, parking, backoff, due notices, rebuild
pauses), `Heartbeats` and `SubscriberRegistry` are all the workers (`es_workers.workers`)
know of a backend. Those ports raise es_workers errors only (`StorageUnavailableError`,
...): an adapter translates its client's errors before they reach them.
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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeAlias, runtime_checkable

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


# -- Subscriber state: what the workers of a NotifyingEventBus keep in a storage ----------

# `SubscriberState.begin`'s answers, per entity
READY = 0
NOTHING_TO_DO = 1
BUSY = 2
NOT_A_STREAM = 3  # the lock is ours, but the entity cannot be read (not an entity stream)
BACKING_OFF = 4  # the entity's last attempt failed and its backoff has not passed
PAUSED = 5  # a rebuild holds the subscriber: nothing begun

BEAT_EVERY_S = 5.0
"""How often a process beats (`Heartbeats.beat`); `es-workers health` allows a few missed
beats."""


@dataclass(frozen=True, slots=True)
class SubscriberEntity:
    """One entity as one subscriber sees it: what every piece of subscriber state is
    keyed by (`SubscriberState.entity` gives it its partition)."""

    subscriber_id: str
    entity_type: str
    entity_id: str
    partition: int

    @property
    def member(self) -> str:
        """The entity in a due set: `<entity type>:<entity ID>` (types hold no ':')."""
        return f"{self.entity_type}:{self.entity_id}"


@dataclass(frozen=True)
class Begun:
    """`SubscriberState.begin`'s answer for one entity: READY (the lock is ours),
    NOTHING_TO_DO, BUSY, NOT_A_STREAM (the lock is ours, the entity cannot be read),
    BACKING_OFF or PAUSED.
    When READY, `entries` are the first stored entries after the checkpoint, as the storage
    read them (`SubscriberState.begun_events` decodes them), `store_entity_id` event 1's ID
    when it is not among them, and `attempts` the failed attempts at the entity's next
    event so far. When BACKING_OFF, `retry_in_ms` is what is left of the backoff."""

    state: int
    checkpoint: int
    entries: list[Any] = field(default_factory=list)
    store_entity_id: str = ""
    attempts: int = 0
    retry_in_ms: int = 0

    @property
    def paused(self) -> bool:
        """A rebuild holds the subscriber: nothing was begun (the notice must stay due)."""
        return self.state == PAUSED


@dataclass(frozen=True)
class Committed:
    """`SubscriberState.commit`'s answer for one entity. `lost`: the lock was no longer
    ours, nothing recorded."""

    head: int
    released: bool

    @property
    def lost(self) -> bool:
        return self.head < 0


@dataclass(frozen=True)
class Failed:
    """`SubscriberState.fail`'s answer: the attempts so far and the wait before the next
    one; `parked` when that was the last attempt, `lost` when the lock was no longer the
    caller's (nothing recorded)."""

    attempts: int
    retry_in_ms: int

    @property
    def lost(self) -> bool:
        return self.attempts < 0

    @property
    def parked(self) -> bool:
        return self.retry_in_ms < 0


@dataclass(frozen=True)
class Failure:
    """What a failed attempt at an entity's event records: the error as
    "ExceptionType: message", its traceback, and the backoff before the next attempt."""

    event_number: int
    error: str
    traceback: str
    backoff_ms: int


@dataclass(frozen=True)
class RebuildRecord:
    """A rebuild that has started over (see `Store.rebuild`); it is deleted when the
    rebuild finishes, so one still there after its pause is gone died halfway."""

    subscriber_id: str
    started_at: str  # ISO 8601, UTC
    by: str  # the rebuilding process: host:pid
    stage: str  # the step it was at: starting over, reset hook, replaying


@runtime_checkable
class SubscriberState(Progress, Protocol):
    """Where the subscribers of a NotifyingEventBus keep their state, per (subscriber,
    entity): a lock with a lease (one worker on an entity at a time; every call that
    records something checks the caller's token still holds it, so a holder whose lease
    expired is fenced off), the checkpoint, failed attempts and their backoff, the parked
    entity, the due notices (re-sent should they be lost); per subscriber a rebuild's pause
    and its record. Calls that take several entities take them of one subscriber and entity
    type, of any partitions. Failures of the backend raise es_workers errors
    (StorageUnavailableError, StorageFullError)."""

    def entity(self, subscriber_id: str, entity_type: str, entity_id: str) -> SubscriberEntity:
        """The entity as the subscriber sees it (with its partition)."""
        ...

    def partition(self, entity_type: str, entity_id: str) -> int:
        """The partition the entity is in."""
        ...

    def begin(self, entities: Sequence[SubscriberEntity], event_numbers: Sequence[int | None],
              token: str, lock_ms: int, read_count: int) -> list[Begun]:
        """For each entity whose notice says it has events up to `event_numbers[i]` (None:
        its head): skips it if parked, the notice is old or its failure is backing off
        (PAUSED for all while a rebuild holds the subscriber), else takes its lock under
        `token` for `lock_ms` and reads up to `read_count` events after its checkpoint."""
        ...

    def begun_events(self, e: SubscriberEntity, begun: Begun) -> Iterator[Event]:
        """The stored events `begin` read for the entity, decoded as iterated: a
        DecodeError, when iterated, at one that cannot be read (NOT_A_STREAM: at once)."""
        ...

    def read_stored(self, entity_type: str, entity_id: str, after: int) -> Iterator[Event]:
        """The entity's stored events after `after`, those before a truncation still kept
        for subscribers included."""
        ...

    def commit(self, entities: Sequence[SubscriberEntity], event_numbers: Sequence[int],
               token: str, lock_ms: int, *, release: bool | Sequence[bool]) -> list[Committed]:
        """Moves each entity's checkpoint to its event number if its lock is still
        `token`'s, renewing it; with `release` (one flag for all, or one per entity), lets
        the lock go when that was the entity's last event."""
        ...

    def unlock(self, entities: Sequence[SubscriberEntity], token: str) -> None:
        """Releases the entities' locks that `token` still holds."""
        ...

    def renew(self, entities: Sequence[SubscriberEntity], token: str, lock_ms: int
              ) -> list[bool]:
        """Extends the entities' locks by `lock_ms` where `token` still holds them; False
        for each one it no longer holds (lost)."""
        ...

    def fail(self, e: SubscriberEntity, token: str, failure: Failure, max_attempts: int
             ) -> Failed:
        """Counts a failed attempt at the entity's next event if `token` still holds its
        lock: no attempt starts before `failure.backoff_ms` has passed; at `max_attempts`,
        parks the entity."""
        ...

    def mark_due(self, entities: Iterable[SubscriberEntity]) -> None:
        """Records notices sent (or to send): re-sent while the subscriber lags the entity
        when they are due."""
        ...

    def hold_pause(self, subscriber_id: str, token: str, pause_ms: int) -> bool:
        """Pauses the subscriber for `pause_ms` (unless renewed): `begin` begins none of
        its entities meanwhile. False, and nothing held, when another token holds it."""
        ...

    def renew_pause(self, subscriber_id: str, token: str, pause_ms: int) -> bool:
        """Gives the pause `pause_ms` more; False when `token` no longer holds it all."""
        ...

    def lift_pause(self, subscriber_id: str, token: str) -> None:
        """Lets workers begin the subscriber's entities again (where `token` holds it)."""
        ...

    def paused_by(self, subscriber_id: str) -> str | None:
        """The token of the rebuild pausing the subscriber (None: not paused)."""
        ...

    def locked(self, subscriber_id: str) -> list[SubscriberEntity]:
        """The subscriber's entities whose lock a worker holds (a handler may be running)."""
        ...

    def still_locked(self, entities: Sequence[SubscriberEntity]) -> list[SubscriberEntity]:
        """Those of the entities whose lock is still held."""
        ...

    def start_over(self, subscriber_id: str, entity_type: str) -> None:
        """Forgets the subscriber's checkpoints, failures and parked entities of the type,
        and any catch-up in progress: the caller hands it the history again."""
        ...

    def record_rebuild(self, record: RebuildRecord) -> None:
        """Keeps the record until `clear_rebuild`: a rebuild that died halfway stays
        visible."""
        ...

    def clear_rebuild(self, subscriber_id: str) -> None:
        """Deletes the subscriber's rebuild record."""
        ...


@runtime_checkable
class Heartbeats(Protocol):
    """Process heartbeats: each process beats as its role every BEAT_EVERY_S, and
    `es-workers health` reads them."""

    def beat(self, role: str) -> None:
        """Says this process (as `role`: "publisher", "worker") is alive now."""
        ...

    def stop(self, role: str) -> None:
        """Removes this process's beat: it stopped on purpose."""
        ...


@runtime_checkable
class SubscriberRegistry(Protocol):
    """The subscriber IDs run on a storage, with the entity types of each: two apps on the
    same data with one subscriber ID would take each other's notices without a word."""

    def claim(self, subscriptions: Mapping[str, Iterable[str]]) -> None:
        """Records the app's subscribers (subscriber ID -> entity types), or raises
        ConfigurationError naming each one recorded with other entity types."""
        ...


@runtime_checkable
class SubscriberStorage(Storage, Protocol):
    """A storage that keeps the state of subscribers beside the entities: what a
    NotifyingEventBus whose workers read the events themselves (DramatiqEventBus) needs.
    RedisStorage is one."""

    def subscriber_state(self) -> SubscriberState:
        """Where subscribers keep their locks, checkpoints, failures and parked entities."""
        ...

    def process_heartbeats(self) -> Heartbeats:
        """Where worker processes say they are alive."""
        ...

    def subscriber_registry(self) -> SubscriberRegistry:
        """Where the subscriber IDs run on the storage are recorded."""
        ...


SUBSCRIBER_STORAGE_METHODS = ("subscriber_state", "process_heartbeats", "subscriber_registry")


def subscriber_storage(storage: object, needed_by: str) -> SubscriberStorage:
    """The storage, if it keeps subscriber state; ConfigurationError naming what it lacks
    otherwise."""
    missing = [name for name in SUBSCRIBER_STORAGE_METHODS
               if not callable(getattr(storage, name, None))]
    if missing or not isinstance(storage, SubscriberStorage):
        lacks = ", ".join(f"{name}()" for name in missing) or "the Storage methods"
        raise ConfigurationError(
            f"{needed_by} needs a storage that keeps subscriber state (ports."
            f"SubscriberStorage: subscribers keep their locks and checkpoints beside the "
            f"entities), and {type(storage).__name__} has no {lacks}: use RedisStorage"
        )
    return storage


def subscriptions_of(bus: Subscriptions, entity_types: Iterable[str]) -> dict[str, list[str]]:
    """The bus's subscriber IDs, each with the entity types (of `entity_types`) it has: what
    `SubscriberRegistry.claim` takes."""
    found: dict[str, list[str]] = {}
    for entity_type in entity_types:
        for subscriber_id in bus.subscriber_ids(entity_type):
            found.setdefault(subscriber_id, []).append(entity_type)
    return found


@runtime_checkable
class AsyncProgress(Protocol):
    """`Progress` awaited: what `AsyncStore.wait_for` asks of an async storage's state."""

    async def wait_handled_async(self, subscriber_ids: Sequence[str], entity_type: str,
                                 entity_id: str, event_number: int, timeout: float) -> None:
        """`Progress.wait_handled`, awaited."""
        ...


@runtime_checkable
class AsyncProgressStorage(Protocol):
    """An async storage that reaches the subscribers' checkpoints (AsyncRedisStorage)."""

    async def subscriber_state(self) -> AsyncProgress:
        """The subscribers' state on this storage's client."""
        ...


@runtime_checkable
class AsyncOpening(Protocol):
    """An async storage with start-up work (AsyncRedisStorage: read its partitions, check
    the server), done by `async with AsyncStore(...)` rather than at the first write."""

    async def open(self) -> object:
        """Does the start-up work; raises what makes the storage unusable."""
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

