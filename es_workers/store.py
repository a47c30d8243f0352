"""Store: opens entity streams, projects them, and publishes new events to subscribers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar, overload

from pydantic import BaseModel

from . import metrics
from .commit_log import Follower, LogReading, log_storage, read_all
from .errors import ConcurrencyError, ConfigurationError
from .event import Content, Event, Handler, is_async
from .forgetting import FORGOTTEN_TYPE, SubjectForgotten, missing_notices
from .keyring import Keyring
from .names import (
    check_entity_id,
    check_entity_type,
    check_subscribed_type,
    subscribers_to_wait_for,
)
from .ports import (
    Bus,
    NotifyingEventBus,
    Progress,
    Rebuilding,
    ResetHook,
    Storage,
    SubscriberStorage,
    check_rebuild,
    rebuilding,
    retaining_storage,
    snapshot_storage,
)
from .position import After, Position
from .removal import REMOVAL_NOTICES, REMOVED_TYPE, notice
from .retention import (
    HotWindow,
    Retention,
    Scavenged,
    check_hot_windows,
    check_retention,
    check_truncate,
)
from .snapshot import (
    Snapshot,
    from_store,
    snapshot_subscriber_id,
    state_name,
    take_snapshot,
    to_store,
)
from .stream import Stream, check_stream
from .upgrade import EventUpgrade, Reader, Reading, check_upgrades

H = TypeVar("H", bound=Handler)
log = logging.getLogger(__name__)
S = TypeVar("S", bound=BaseModel)


class Store:
    """The core of `es_workers.Store`: everything but `from_settings` and a default bus, which
    only the composition root (`es_workers.app`) knows; it imports no backend, no settings
    and no wiring. Build stores with `es_workers.Store`, documented there.

    `Store(storage, bus=..., events={...}, upgrades={...})`: `events` maps each entity type
    to the Content classes it may hold; they are registered with the storage at once, so
    reading and writing work without `start()`. `upgrades` maps entity types to upgrades
    applied, in order, on read and on delivery.

    `logger` receives the records of the store and of what it builds and runs: the default
    in-memory bus, the publisher of `start()`, and (`from_settings`) the wiring. Without
    one, each part logs under its own `es_workers.*` name. A bus you pass keeps its own.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        bus: Bus | None = None,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        logger: logging.Logger | None = None,
        retention: Mapping[str, Retention] | None = None,
        archive: Mapping[str, HotWindow] | None = None,
    ) -> None:
        self.storage = storage
        self.retention = check_retention(retention)
        # Per entity type, over ES_ARCHIVE_AFTER: what `es-workers archive` keeps hot.
        self.hot_windows = check_hot_windows(archive)
        for entity_type, limits in self.retention.items():
            retaining_storage(storage).retain(entity_type, limits)
        self.logger = logger
        self.bus: Bus = bus if bus is not None else self.default_bus(logger)
        for entity_type, content_types in (events or {}).items():
            storage.register(entity_type, *content_types)
            metrics.declare_entity_type(entity_type)
        if getattr(storage, "keyring", None) is not None:  # forget notices (store.forget)
            storage.register(FORGOTTEN_TYPE, SubjectForgotten)
        check_upgrades(upgrades or {})
        self.reader = Reader(storage.read, upgrades or {})
        self._stop = threading.Event()
        self._publishing: threading.Thread | None = None
        self._close_on_exit = False
        if isinstance(self.bus, NotifyingEventBus | Rebuilding):
            self.bus.bind(self.reader, storage)

    def default_bus(self, logger: logging.Logger | None) -> Bus:
        """The bus of a store given none. The core knows no bus (it imports no backend):
        `es_workers.Store` answers an `InMemoryEventBus`; this one asks for a bus."""
        raise ConfigurationError(
            f"{type(self).__name__}(storage) needs a bus: pass bus=..., or build the store "
            "with es_workers.Store, whose default bus is an InMemoryEventBus")

    def open(self, entity_type: str, entity_id: str) -> Stream:
        """A stream of the entity from its first event. Use it as a context manager."""
        return self.open_from(entity_type, entity_id, 0)

    def open_from(self, entity_type: str, entity_id: str, event_number: int) -> Stream:
        """A stream whose first event read is `event_number + 1`.

        It must be read before it is written to.
        """
        check_stream(entity_type, entity_id, event_number)
        return Stream(self.reader, self.storage.write, entity_type, entity_id, event_number)

    def project(self, entity_type: str, entity_id: str, handler: Handler) -> None:
        """Calls the handler with every event of the entity, upgraded, in order."""
        with self.open(entity_type, entity_id) as stream:
            stream.project(handler)

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Reading:
        """Events of the entity after `after`, upgraded: what subscribers are handed."""
        return self.reader.read(entity_type, entity_id, after)

    def read_all(self, after: After = None, *, entity_types: Collection[str] | None = None,
                 limit: int | None = None) -> LogReading:
        """Every event in log order (commit order per partition; several partitions are
        merged by event time), upgraded, after `after`: None (from the start), a Position,
        or one Position per partition (e.g. the `positions` of an earlier reading). Only
        `entity_types` when given; at most `limit` events. `TruncatedError` where the log
        was trimmed (`ES_LOG_KEEP`)."""
        return read_all(self.storage, self.reader, after, entity_types, limit)

    def follow(self, after: After = None, *, entity_types: Collection[str] | None = None,
               name: str | None = None) -> Follower:
        """`read_all`, then every event as it is committed: a blocking iterator (and a
        context manager) that ends only when `stop()` is called, from any thread. Named,
        it records how far it got, goes on from there when `after` is None, and holds
        back the log's trimming. See `es_workers.commit_log.Follower`."""
        return Follower(self.storage, self.reader, after, entity_types, name)

    def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        """Stops keeping the entity's events before `event_number`: reading from before it
        raises TruncatedError (naming the first kept event) at once, `open_from(n)` from
        `event_number - 1` on reads normally, and the scavenger removes them once every
        subscriber has handled them. Numbering never changes: the next write takes the next
        number. Returns the first kept event number (a truncation never moves back);
        ValueError beyond the entity's head + 1."""
        check_truncate(entity_type, entity_id, event_number)
        return retaining_storage(self.storage).truncate_before(entity_type, entity_id,
                                                               event_number)

    def tombstone(self, entity_type: str, entity_id: str) -> None:
        """Deletes the entity for good: reading it or writing to it raises
        StreamDeletedError from now on (a write is refused where it is appended, nothing
        stored), `entity_ids` no longer lists it and its snapshots are deleted. Its events
        stay stored until every subscriber has handled them (then the scavenger removes
        them). It stays recorded as tombstoned (on Redis in `<prefix>:{pN}:truncated:<type>`),
        and an `EntityTombstoned` notice is appended to `REMOVED_TYPE` / entity type (see
        `es_workers.removal`). Idempotent."""
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        head = retaining_storage(self.storage).tombstone(entity_type, entity_id)
        if head >= 0:
            self._notify_removal(entity_type, notice(entity_id, head, tombstone=True))

    def delete(self, entity_type: str, entity_id: str) -> None:
        """Soft-deletes the entity (as KurrentDB's delete): reads see no events (from any
        number before its last: none, no error), `entity_ids` no longer lists it and its
        snapshots are deleted. A later write starts it again after its old numbers
        (`store.open(...)`, read, write: the stream goes on from there), under the same
        `store_entity_id`, and lists it again. Its events stay stored until every subscriber
        has handled them (then the scavenger removes them). An `EntityDeleted` notice is
        appended to `REMOVED_TYPE` / entity type. An entity with no events, or tombstoned:
        nothing happens."""
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        head = retaining_storage(self.storage).delete(entity_type, entity_id)
        if head >= 0:
            self._notify_removal(entity_type, notice(entity_id, head, tombstone=False))

    def _notify_removal(self, entity_type: str, content: Content) -> None:
        """Appends the notice after the last one: a blind write, then (another writer was
        there) after the number the conflict names."""
        self.storage.register(REMOVED_TYPE, *REMOVAL_NOTICES)
        stream = self.open(REMOVED_TYPE, entity_type)
        while True:
            try:
                stream.write(content)
                return
            except ConcurrencyError as conflict:
                stream = self.open_from(REMOVED_TYPE, entity_type, conflict.actual)
                list(stream.all())

    def scavenge(self) -> Scavenged:
        """Removes what truncations and the store's `retention` limits allow, in bounded
        steps, and never an event a subscriber has not handled (this store's Dramatiq
        subscribers, and every subscriber recorded under the prefix). Returns and logs
        what it removed (entities, events, bytes)."""
        checkpointed = isinstance(self.bus, NotifyingEventBus)
        subscribers = {t: self.subscriber_ids(t) if checkpointed else []
                       for t in self.entity_types()}
        done = retaining_storage(self.storage).scavenge(subscribers)
        (self.logger or log).info("scavenged %d events (%d bytes) of %d entities", done.events,
                                  done.bytes, done.entities)
        return done

    def save_snapshot(self, entity_type: str, entity_id: str, state: BaseModel, *,
                      event_number: int) -> None:
        """Keeps `state` (a pydantic model) as the entity's state after its event
        `event_number`, beside the entity (never delivered to subscribers), as the one
        snapshot of its class unless one of the same `snapshot_version` after a later event
        is there. `SnapshotError` if the entity has no such event (beyond its head)."""
        stored = to_store(entity_type, entity_id, state, event_number)
        snapshot_storage(self.storage).save_snapshot(entity_type, entity_id, stored)

    def load_snapshot(self, entity_type: str, entity_id: str,
                      state_type: type[S]) -> Snapshot[S] | None:
        """The entity's newest usable snapshot of `state_type`: None if there is none, or it
        was saved with another `snapshot_version` or no longer validates. Go on with
        `open_from(entity_type, entity_id, snapshot.event_number)`."""
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        found = snapshot_storage(self.storage).load_snapshot(entity_type, entity_id,
                                                             state_name(state_type))
        return from_store(found, state_type)

    def snapshot_every(self, entity_type: str, every: int, state_type: type[S],
                       project: Callable[[S | None, Event], S], *,
                       subscriber_id: str | None = None) -> str:
        """Saves a snapshot of each entity of the type after every `every`-th event: a
        subscriber (its ID returned; by default `snapshot_<state class>`) that projects
        the events after the newest snapshot with `project(state or None, event) -> state`
        and saves the result. Run by the workers like any subscriber."""
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        chosen = subscriber_id or snapshot_subscriber_id(state_type)

        def snapshot(event: Event) -> None:
            number, entity_id = event.event_number, event.entity_id
            if number % every:
                return
            state = take_snapshot(
                lambda: self.load_snapshot(entity_type, entity_id, state_type),
                lambda after: self.read(entity_type, entity_id, after), project, number)
            if state is not None:
                self.save_snapshot(entity_type, entity_id, state, event_number=number)

        self.subscribe(entity_type, chosen, snapshot)
        return chosen

    def entity_types(self) -> list[str]:
        """The entity types this store was given events for."""
        return self.storage.entity_types()

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of the type's entity IDs, oldest first, and the next page's token."""
        return self.storage.entity_ids(entity_type, after, limit)

    @overload
    def subscribe(self, entity_type: str, subscriber_id: str, *,
                  reset: ResetHook | None = None) -> Callable[[H], H]: ...

    @overload
    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler, *,
                  reset: ResetHook | None = None) -> None: ...

    def subscribe(
        self, entity_type: str, subscriber_id: str, handler: Handler | None = None, *,
        reset: ResetHook | None = None,
    ) -> Callable[[H], H] | None:
        """Registers a handler for every event of the entity type under `subscriber_id`.

        Used as a decorator, `@store.subscribe("account", "balances")`, it returns the
        function unchanged. The entity type must be one the store has events for (else
        UnknownNameError, naming the known types): a handler of a type with no events
        would never run. `reset` (a function of no arguments, or an `async def`) clears
        the subscriber's read model: with it, `rebuild(subscriber_id)` can rebuild it.
        """
        if entity_type == REMOVED_TYPE:  # removal notices: registered on demand
            self.storage.register(REMOVED_TYPE, *REMOVAL_NOTICES)
        check_subscribed_type(entity_type, self.storage.entity_types())
        if handler is not None:
            self._subscribe(entity_type, subscriber_id, handler, reset)
            return None

        def register(function: H) -> H:
            self._subscribe(entity_type, subscriber_id, function, reset)
            return function

        return register

    def _subscribe(self, entity_type: str, subscriber_id: str, handler: Handler,
                   reset: ResetHook | None) -> None:
        if reset is not None:
            rebuilding(self.bus).declare_reset(subscriber_id, reset)
        self.bus.subscribe(entity_type, subscriber_id, handler)
        if not isinstance(self.bus, NotifyingEventBus):  # its workers declare theirs
            metrics.declare_subscriber(subscriber_id, entity_type)

    def subscriber_ids(self, entity_type: str) -> list[str]:
        return self.bus.subscriber_ids(entity_type)

    @overload
    def wait_for(self, entity_type: str, entity_id: str, event_number: int, *,
                 subscriber_ids: Sequence[str] | None = None, timeout: float = 5.0) -> None: ...

    @overload
    def wait_for(self, entity_type: Position, *,
                 subscriber_ids: Sequence[str] | None = None, timeout: float = 5.0) -> None: ...

    def wait_for(
        self,
        entity_type: str | Position,
        entity_id: str | None = None,
        event_number: int | None = None,
        *,
        subscriber_ids: Sequence[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Read-your-writes: returns once every named subscriber (None: every subscriber of
        the entity type) has handled the entity's events up to `event_number`, e.g. after
        `stream.write(...)`, `store.wait_for(type, id, stream.position)`; or, given a log
        Position (`positions = stream.write(...)`, `store.wait_for(positions[-1])`), the
        event at that position.

        Raises `WaitTimeoutError` (naming the subscribers still behind) after `timeout`
        seconds, and `ParkedError` at once if one of them has the entity parked at or before
        that event. It waits for messages, not by polling in a loop.
        """
        if isinstance(entity_type, Position):
            entity_type, entity_id, event_number = self._logged(entity_type)
        if entity_id is None or event_number is None:
            raise TypeError("wait_for takes an entity type, ID and event number, or a Position")
        wanted = subscribers_to_wait_for(
            entity_type, entity_id, self.subscriber_ids(entity_type), subscriber_ids
        )
        if wanted and event_number > 0:
            self._progress().wait_handled(wanted, entity_type, entity_id, event_number,
                                          timeout)

    def rebuild(self, subscriber_id: str, *, timeout: float = 60.0, pause_ms: int = 30_000,
                progress: Callable[[int], None] | None = None) -> int:
        """Rebuilds a subscriber's read model while the app runs: pauses the subscriber
        (workers begin none of its entities; notices wait), waits up to `timeout` seconds
        for its running handlers, forgets its checkpoints, failures, parked entities and
        catch-up, calls its reset hook (`subscribe(..., reset=...)`), hands it the whole
        history and resumes. Workers then handle each entity's history, then the events
        written meanwhile, in order per entity; other subscribers never notice.

        Returns the entities handed over (`progress` is told the count as it grows). The
        pause expires `pause_ms` after this process stops renewing it (had it died), and
        `es-workers status` shows a rebuild that died halfway: run it again. Raises
        RebuildError (the message says whether anything was reset), UnknownNameError, and
        ConfigurationError for a subscriber without a reset hook.
        """
        bus = rebuilding(self.bus)
        hook = check_rebuild(bus, self.entity_types(), self.subscriber_ids, subscriber_id)
        return bus.rebuild(subscriber_id, lambda: _call_reset(hook), timeout=timeout,
                           pause_ms=pause_ms, progress=progress)

    def _logged(self, position: Position) -> tuple[str, str, int]:
        found = log_storage(self.storage).log_entry(position)
        if found is None:
            raise ValueError(f"no event at {position} (not written yet, or trimmed)")
        return found

    def _progress(self) -> Progress:
        if isinstance(self.bus, NotifyingEventBus) and isinstance(self.storage,
                                                                   SubscriberStorage):
            return self.storage.subscriber_state()
        if isinstance(self.bus, Progress):
            return self.bus
        raise ConfigurationError(
            f"wait_for needs a bus that tells how far subscribers got (InMemoryEventBus, "
            f"DramatiqEventBus on RedisStorage), not {type(self.bus).__name__}"
        )

    def forget(self, subject: str) -> int:
        """Forgets a person: destroys the data key of `subject`, so its `Personal` fields
        read as placeholders everywhere (`event.forgotten`), and appends a
        `SubjectForgotten` event to the entity `FORGOTTEN_TYPE` / subject for subscribers.
        Idempotent, and safe to run again after a crash at any point. Returns how many data
        keys of the subject were destroyed so far (0: it never had personal data)."""
        keyring = self._keyring()
        destroyed = keyring.forget(subject)
        while True:
            with self.open(FORGOTTEN_TYPE, subject) as stream:
                recorded = sum(1 for _ in stream.all())
                try:
                    stream.write(*missing_notices(subject, recorded, destroyed))
                    return destroyed
                except ConcurrencyError:  # another forget of the subject: count again
                    continue

    def rotate_keys(self) -> int:
        """Re-wraps every data key with the current master key (`ES_ENCRYPTION_KEY`), so
        older master keys can be dropped; events are not touched. Returns how many."""
        return self._keyring().rotate()

    def _keyring(self) -> Keyring:
        keyring = getattr(self.storage, "keyring", None)
        if not isinstance(keyring, Keyring):
            raise ConfigurationError(
                "personal data needs a master key: set ES_ENCRYPTION_KEY (`es-workers keys "
                "new` makes one), or pass encryption=MasterKeys(...) to the storage")
        return keyring

    def start(self) -> None:
        """Runs the publisher in this thread until `close()` (or a stop signal): blocks."""
        self._stop.clear()
        self._publishing = threading.current_thread()
        metrics.declare_publisher(self.entity_types())
        try:
            self.storage.start_publish(self.bus, self.reader, self._stop, logger=self.logger)
        finally:
            self._publishing = None
            if self._close_on_exit:
                self._close_on_exit = False
                self.bus.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stops `start()` (letting the current relay round finish) and closes the bus.

        Safe to call from a signal handler in the thread running `start()`: `start()` then
        returns at its next round and closes the bus itself.
        """
        self._stop.set()
        running = self._publishing
        if running is threading.current_thread():
            self._close_on_exit = True
            return
        deadline = time.monotonic() + timeout
        while self._publishing is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        self.bus.close()


def _call_reset(hook: ResetHook) -> None:
    """Calls the reset hook; an `async def` one on an event loop of its own."""
    if is_async(hook):
        asyncio.run(hook())  # type: ignore[arg-type]
    else:
        hook()
