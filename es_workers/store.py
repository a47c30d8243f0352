"""Store: opens entity streams, projects them, and publishes new events to subscribers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar, overload

from .commit_log import Follower, LogReading, log_storage, read_all
from .errors import ConfigurationError
from .event import Content, Handler
from .memory.bus import InMemoryEventBus
from .names import subscribers_to_wait_for
from .ports import Bus, NotifyingEventBus, Progress, Storage
from .position import After, Position
from .redis.storage import RedisStorage
from .settings import Settings
from .stream import Stream, check_stream
from .upgrade import EventUpgrade, Reader, Reading, check_upgrades
from .wiring import build_parts

H = TypeVar("H", bound=Handler)


class Store:
    """The entry point: `Store(storage, bus=..., events={...}, upgrades={...})`.

    `events` maps each entity type to the Content classes it may hold; they are registered
    with the storage at once, so reading and writing work without `start()`. `upgrades`
    maps entity types to upgrades applied, in order, on read and on delivery.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        bus: Bus | None = None,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.storage = storage
        self.bus: Bus = bus if bus is not None else InMemoryEventBus()
        self.log = logger or logging.getLogger("es_workers")
        for entity_type, content_types in (events or {}).items():
            storage.register(entity_type, *content_types)
        check_upgrades(upgrades or {})
        self.reader = Reader(storage.read, upgrades or {})
        self._stop = threading.Event()
        self._publishing: threading.Thread | None = None
        self._close_on_exit = False
        if isinstance(self.bus, NotifyingEventBus):
            self.bus.bind(self.reader, storage)

    @classmethod
    def from_settings(
        cls,
        *,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        settings: Settings | None = None,
    ) -> Store:
        """A Store on Redis with Dramatiq subscribers, configured by `ES_...` settings
        (see `es_workers.settings`); with no `ES_REDIS_URL`, on an embedded fakeredis."""
        storage, bus = build_parts(settings)
        return cls(storage, bus=bus, events=events, upgrades=upgrades)

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

    def entity_types(self) -> list[str]:
        """The entity types this store was given events for."""
        return self.storage.entity_types()

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of the type's entity IDs, oldest first, and the next page's token."""
        return self.storage.entity_ids(entity_type, after, limit)

    @overload
    def subscribe(self, entity_type: str, subscriber_id: str) -> Callable[[H], H]: ...

    @overload
    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler) -> None: ...

    def subscribe(
        self, entity_type: str, subscriber_id: str, handler: Handler | None = None
    ) -> Callable[[H], H] | None:
        """Registers a handler for every event of the entity type under `subscriber_id`.

        Used as a decorator, `@store.subscribe("account", "balances")`, it returns the
        function unchanged.
        """
        if handler is not None:
            self.bus.subscribe(entity_type, subscriber_id, handler)
            return None

        def register(function: H) -> H:
            self.bus.subscribe(entity_type, subscriber_id, function)
            return function

        return register

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

    def _logged(self, position: Position) -> tuple[str, str, int]:
        found = log_storage(self.storage).log_entry(position)
        if found is None:
            raise ValueError(f"no event at {position} (not written yet, or trimmed)")
        return found

    def _progress(self) -> Progress:
        if isinstance(self.bus, NotifyingEventBus) and isinstance(self.storage, RedisStorage):
            return self.storage.state
        if isinstance(self.bus, Progress):
            return self.bus
        raise ConfigurationError(
            f"wait_for needs a bus that tells how far subscribers got (InMemoryEventBus, "
            f"DramatiqEventBus on RedisStorage), not {type(self.bus).__name__}"
        )

    def start(self) -> None:
        """Runs the publisher in this thread until `close()` (or a stop signal): blocks."""
        self._stop.clear()
        self._publishing = threading.current_thread()
        try:
            self.storage.start_publish(self.bus, self.reader, self._stop)
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
