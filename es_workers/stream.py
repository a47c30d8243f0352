"""Stream: the events of one entity, read and appended with optimistic concurrency."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import EsError, StreamNotReadError
from .event import Content, Event, Handler, as_callable
from .ids import new_ids
from .upgrade import apply_upgrades

if TYPE_CHECKING:
    from .store import Store


class Stream:
    """One entity's events. Read with `all()` or `project()`, append with `write()`.

    `position` is the number of the last event read or written through this stream. A
    write appends at `position + 1`; if another writer got there first it raises
    `ConcurrencyError` and stores nothing.
    """

    def __init__(self, store: Store, entity_type: str, entity_id: str, after: int) -> None:
        self._store = store
        self.entity_type = entity_type
        self.entity_id = entity_id
        self._after = after
        self._position = after
        # Opened at the start, the stream may write blind (the append checks the position).
        # Opened from event n, it must read first: position n says nothing of the head.
        self._may_write = after == 0
        self._events: Iterator[Event] | None = None
        self._closed = False

    @property
    def position(self) -> int:
        return self._position

    def all(self) -> Iterator[Event]:
        """The entity's events after the opening number, upgraded, in order.

        Called twice, it returns the same iterator (events are read once).
        """
        self._check_open()
        if self._events is None:
            self._events = self._read()
        return self._events

    def _read(self) -> Iterator[Event]:
        stored = self._store.storage.read(self.entity_type, self.entity_id, self._after)
        upgrades = self._store.upgrades_for(self.entity_type)
        if upgrades:
            yield from apply_upgrades(self._track(stored), upgrades)
        else:  # one generator less per event: hydrating is read-bound
            for event in stored:
                self._position = event.event_number
                yield event
        self._may_write = True

    def _track(self, stored: Iterator[Event]) -> Iterator[Event]:
        """The stored events, moving the position as each is read (before any upgrade)."""
        for event in stored:
            self._position = event.event_number
            yield event

    def project(self, handler: Handler) -> None:
        """Calls the handler with each event of `all()`; stops at the first exception."""
        handle = as_callable(handler)
        for event in self.all():
            handle(event)

    def write(self, *contents: Content) -> None:
        """Appends the contents as events `position + 1 ..`, all or none."""
        self._check_open()
        if not contents:
            return
        if not self._may_write:
            raise StreamNotReadError(
                f"{self.entity_type} {self.entity_id!r} was opened from event {self._after} "
                "and not read: read it (all() or project()) before writing"
            )
        now = datetime.now(UTC)
        entity_id, entity_type, position = self.entity_id, self.entity_type, self._position
        events = [
            # store_entity_id is the storage's to tell (the entity's first event's ID)
            Event(entity_id, entity_type, position + offset, now, content, store_event_id, "")
            for offset, (content, store_event_id) in enumerate(
                zip(contents, new_ids(len(contents)), strict=True), start=1
            )
        ]
        self._store.storage.write(self.entity_type, events)
        self._position += len(events)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise EsError(f"{self.entity_type} {self.entity_id!r}: the stream is closed")

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
