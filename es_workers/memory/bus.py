"""InMemoryEventBus: synchronous delivery in the calling thread, as in the Go library."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..errors import ConfigurationError, RebuildError, SubscriberError, WaitTimeoutError
from ..event import Event, Handler, as_callable, awaited_in, is_async, own_copy
from ..names import check_entity_type, check_subscriber_id, one_reset_hook
from ..ports import ResetHook, Storage
from ..tracing import handler_call
from ..upgrade import Reader

log = logging.getLogger("es_workers.memory.bus")


class InMemoryEventBus:
    """Calls each subscriber's handler for each event.

    Subscribers are independent: a handler that raises is logged with the entity and event
    number, and that event is skipped for that subscriber only (as in the Go library);
    every other subscriber still gets every event. Each subscriber is handed an event
    whose content is its own copy (`own_copy`): what one handler changes, no other sees.

    An `async def` handler is awaited on an event loop the bus keeps in a thread of its
    own, one event at a time: the same order, and the loop lives on between events, so a
    handler may keep async clients (an `asyncio.run` per event would close their loop).

    `logger`: where its records go (a Store passes its own); by default
    `es_workers.memory.bus`.
    """

    def __init__(self, *, logger: logging.Logger | None = None) -> None:
        self.log = logger or log
        self._lock = threading.Lock()
        self._handlers: dict[str, dict[str, Callable[[Event], Any]]] = {}
        self._loop: _LoopThread | None = None
        # (subscriber, entity type, entity ID) -> last event number handled (or skipped)
        self._handled: dict[tuple[str, str, str], int] = {}
        self._moved = threading.Condition(self._lock)
        # Rebuilds: the history they read, subscribers' reset hooks, the calls of each
        # subscriber running, the events a paused one has waiting, and how far a rebuild
        # handed each entity over (those events are not handed again).
        self._history: tuple[Reader, Storage] | None = None
        self._resets: dict[str, ResetHook] = {}
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, list[tuple[Callable[[Event], Any], Event]]] = {}
        self._replayed: dict[tuple[str, str, str], int] = {}

    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler) -> None:
        check_entity_type(entity_type)
        check_subscriber_id(subscriber_id)
        function = as_callable(handler)
        if is_async(function):
            function = self._awaiting(function)
        with self._lock:
            handlers = self._handlers.setdefault(entity_type, {})
            if subscriber_id in handlers:
                raise SubscriberError(
                    f"subscriber {subscriber_id!r} is already registered for {entity_type!r}"
                )
            handlers[subscriber_id] = function

    def subscriber_ids(self, entity_type: str) -> list[str]:
        with self._lock:
            return list(self._handlers.get(entity_type, {}))

    def write(self, entity_type: str, events: Iterable[Event]) -> None:
        self.write_to(entity_type, events, self.subscriber_ids(entity_type))

    def write_to(
        self, entity_type: str, events: Iterable[Event], subscriber_ids: Sequence[str]
    ) -> None:
        with self._lock:
            known = self._handlers.get(entity_type, {})
            handlers = [(s, known[s]) for s in subscriber_ids if s in known]
        for event in list(events):
            for subscriber_id, handler in handlers:
                self._hand(subscriber_id, handler, event)

    def _hand(self, subscriber_id: str, handler: Callable[[Event], Any], event: Event) -> None:
        """Calls the handler, unless a rebuild pauses the subscriber (the event waits for
        it to end) or handed it this event already."""
        with self._lock:
            if subscriber_id in self._waiting:
                self._waiting[subscriber_id].append((handler, event))
                return
            key = (subscriber_id, event.entity_type, event.entity_id)
            if event.event_number <= self._replayed.get(key, 0):
                return
            self._running[subscriber_id] += 1
        try:
            self._call(subscriber_id, handler, event)
        finally:
            with self._moved:
                self._running[subscriber_id] -= 1
                self._moved.notify_all()

    def _call(self, subscriber_id: str, handler: Callable[[Event], Any], event: Event) -> None:
        try:
            with handler_call(subscriber_id, event):
                handler(own_copy(event))
        except Exception:
            self.log.exception(
                "subscriber %s failed on %s %r event %d; skipped for this subscriber",
                subscriber_id, event.entity_type, event.entity_id, event.event_number,
            )
        self._record(subscriber_id, event)

    def _record(self, subscriber_id: str, event: Event) -> None:
        with self._moved:
            key = (subscriber_id, event.entity_type, event.entity_id)
            self._handled[key] = max(self._handled.get(key, 0), event.event_number)
            self._moved.notify_all()

    def wait_handled(self, subscriber_ids: Sequence[str], entity_type: str, entity_id: str,
                     event_number: int, timeout: float) -> None:
        """Returns once each subscriber was handed the entity's events up to `event_number`
        (a handler that failed on one skipped it). Never parks, so never ParkedError."""

        def behind() -> dict[str, int]:
            done = {s: self._handled.get((s, entity_type, entity_id), 0) for s in subscriber_ids}
            return {s: n for s, n in done.items() if n < event_number}

        with self._moved:
            if not self._moved.wait_for(lambda: not behind(), timeout):
                raise WaitTimeoutError(entity_type, entity_id, event_number, behind(), timeout)

    # -- Rebuild ---------------------------------------------------------------------------

    def bind(self, reader: Reader, storage: Storage) -> None:
        """Called by the Store it is given to: a rebuild reads the history there."""
        self._history = (reader, storage)

    def declare_reset(self, subscriber_id: str, reset: ResetHook) -> None:
        with self._lock:
            self._resets[subscriber_id] = one_reset_hook(
                subscriber_id, self._resets.get(subscriber_id), reset)

    def reset_hook(self, subscriber_id: str) -> ResetHook | None:
        with self._lock:
            return self._resets.get(subscriber_id)

    def rebuild(self, subscriber_id: str, reset: Callable[[], None], *, timeout: float,
                pause_ms: int = 0, progress: Callable[[int], None] | None = None) -> int:
        """`Store.rebuild` in this process: events for the subscriber wait while its running
        calls finish, `reset` runs, its whole history is handed over (read from the bound
        Store's storage), then the events that waited, those not handed over already.
        `pause_ms` is for buses shared by processes. Returns the entities handed over."""
        if self._history is None:
            raise ConfigurationError("InMemoryEventBus is not bound to a Store")
        reader, storage = self._history
        with self._moved:
            if subscriber_id in self._waiting:
                raise RebuildError(f"subscriber {subscriber_id!r} is being rebuilt already")
            self._waiting[subscriber_id] = []
            handlers = {kind: found[subscriber_id] for kind, found in self._handlers.items()
                        if subscriber_id in found}
        try:
            self._wait_idle(subscriber_id, timeout)
            reset()
            sent = 0
            for entity_type, handler in sorted(handlers.items()):
                token: str | None = None
                while True:
                    ids, token = storage.entity_ids(entity_type, token, 500)
                    for entity_id in ids:
                        self._replay(subscriber_id, handler, reader, entity_type, entity_id)
                    sent += len(ids)
                    if progress is not None:
                        progress(sent)
                    if token is None:
                        break
            return sent
        finally:
            self._resume(subscriber_id)

    def _wait_idle(self, subscriber_id: str, timeout: float) -> None:
        """Waits for the subscriber's running calls, then forgets what it handled."""
        with self._moved:
            if not self._moved.wait_for(lambda: not self._running[subscriber_id], timeout):
                raise RebuildError(
                    f"{self._running[subscriber_id]} calls of {subscriber_id!r} still running "
                    f"after {timeout:g} s; nothing was reset and the subscriber runs on"
                )
            for done in (self._handled, self._replayed):
                for key in [key for key in done if key[0] == subscriber_id]:
                    del done[key]

    def _replay(self, subscriber_id: str, handler: Callable[[Event], Any], reader: Reader,
                entity_type: str, entity_id: str) -> None:
        reading = reader.read(entity_type, entity_id)
        for event in reading:
            self._call(subscriber_id, handler, event)
        with self._lock:
            self._replayed[(subscriber_id, entity_type, entity_id)] = reading.position

    def _resume(self, subscriber_id: str) -> None:
        """Hands over the events that waited, in order, until none is left (events that
        come meanwhile wait behind them), then lets new ones through."""
        while True:
            with self._lock:
                waiting = self._waiting[subscriber_id]
                if not waiting:
                    del self._waiting[subscriber_id]
                    return
                self._waiting[subscriber_id] = []
            for handler, event in waiting:
                key = (subscriber_id, event.entity_type, event.entity_id)
                if event.event_number > self._replayed.get(key, 0):
                    self._call(subscriber_id, handler, event)

    def _awaiting(self, handler: Callable[[Event], Any]) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
            with self._lock:
                if self._loop is None:
                    self._loop = _LoopThread()
                loop = self._loop
            loop.run(awaited_in(contextvars.copy_context(), handler, event))

        return handle

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()


class _LoopThread:
    """An asyncio event loop running in a daemon thread; `run` waits for a coroutine."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="es-memory-bus-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
