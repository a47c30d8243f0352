"""Stream: the events of one entity, read and appended with optimistic concurrency."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType

from .errors import EsError, StreamNotReadError
from .event import Content, Event, Handler, as_callable
from .ids import new_ids
from .metadata import check, for_write
from .tracing import append_span, traceparent
from .upgrade import Reader, Reading

WriteStored = Callable[[str, Sequence[Event]], None]
"""A storage's `write(entity_type, events)`."""


class Stream:
    """One entity's events. Read with `all()` or `project()`, append with `write()`.

    `position` is the number of the last event read or written through this stream. A
    write appends at `position + 1`; if another writer got there first it raises
    `ConcurrencyError` and stores nothing.
    """

    def __init__(
        self, reader: Reader, write: WriteStored, entity_type: str, entity_id: str, after: int
    ) -> None:
        self._reader = reader
        self._write = write
        self.entity_type = entity_type
        self.entity_id = entity_id
        self._after = after
        self._written = after
        # Opened at the start, the stream may write blind (the append checks the position).
        # Opened from event n, it must read first: position n says nothing of the head.
        self._may_write = after == 0
        self._reading: Reading | None = None
        self._closed = False

    @property
    def position(self) -> int:
        reading = self._reading
        if reading is not None and reading.position > self._written:
            return reading.position
        return self._written

    def all(self) -> Reading:
        """The entity's events after the opening number, upgraded, in order.

        Each call reads the storage again from where the stream was opened.
        """
        self._check_open()
        self._reading = self._reader.read(self.entity_type, self.entity_id, self._after)
        return self._reading

    def project(self, handler: Handler) -> None:
        """Calls the handler with each event of `all()`; stops at the first exception."""
        self.all().feed(as_callable(handler))

    def write(self, *contents: Content, metadata: Mapping[str, str] | None = None) -> None:
        """Appends the contents as events `position + 1 ..`, all or none, with `metadata`
        (see `es_workers.metadata`: limits, and the causation recorded automatically)."""
        self._check_open()
        given = check(metadata) if metadata is not None else None
        if not contents:
            return
        if not (self._may_write or (self._reading is not None and self._reading.finished)):
            raise StreamNotReadError(
                f"{self.entity_type} {self.entity_id!r} was opened from event {self._after} "
                "and not read: read it (all() or project()) before writing"
            )
        self._may_write = True
        entity_id, entity_type, position = self.entity_id, self.entity_type, self.position
        with append_span(entity_type, entity_id, position + 1, position + len(contents)):
            stored = for_write(given, traceparent())
            now = datetime.now(UTC)
            events = [
                # store_entity_id is the storage's to tell (the entity's first event's ID)
                Event(entity_id, entity_type, position + offset, now, content, store_event_id,
                      "", stored)
                for offset, (content, store_event_id) in enumerate(
                    zip(contents, new_ids(len(contents)), strict=True), start=1
                )
            ]
            self._write(entity_type, events)
        self._written = position + len(events)

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
