"""Stream: the events of one entity, read and appended with optimistic concurrency."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

from .errors import DurabilityError, EsError, StorageUnavailableError, StreamNotReadError
from .event import Content, Event, Handler, as_callable
from .ids import new_ids
from .metadata import check, for_write
from .names import check_entity_id, check_entity_type
from .position import Position
from .tracing import append_span
from .upgrade import AsyncReading, Reader, Reading

WriteStored = Callable[[str, Sequence[Event]], Sequence[Position] | None]
"""A storage's `write(entity_type, events)`."""


def check_stream(entity_type: str, entity_id: str, event_number: int) -> None:
    """Checks the arguments of `open_from` (both stores)."""
    check_entity_type(entity_type)
    check_entity_id(entity_id)
    if not isinstance(event_number, int) or event_number < 0:
        raise ValueError(f"event_number must be an int >= 0, got {event_number!r}")


class StreamState:
    """What `Stream` and `AsyncStream` share: the position, whether the stream may write,
    and the events a write appends."""

    def __init__(self, entity_type: str, entity_id: str, after: int) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self._after = after
        self._written = after
        # Opened at the start, the stream may write blind (the append checks the position).
        # Opened from event n, it must read first: position n says nothing of the head.
        self._may_write = after == 0
        self._reading: Reading | AsyncReading | None = None
        self._closed = False
        # A write that failed with Redis unavailable or unconfirmed by replicas, kept so that
        # writing the same contents again re-sends the same events (same store_event_ids and
        # numbers): if the first attempt did reach Redis, the append script recognises them,
        # nothing doubles, and the replicas are waited for again.
        self._unconfirmed: _Unconfirmed | None = None

    @property
    def position(self) -> int:
        """The number of the last event read or written: where the next write goes after."""
        reading = self._reading
        if reading is not None and reading.position > self._written:
            return reading.position
        return self._written

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise EsError(f"{self.entity_type} {self.entity_id!r}: the stream is closed")

    def _writable(
        self, contents: tuple[Content, ...], metadata: Mapping[str, str] | None
    ) -> dict[str, str] | None:
        """Checks that the stream may write the contents; returns the caller's metadata,
        checked (see `es_workers.metadata`)."""
        self._check_open()
        given = check(metadata) if metadata is not None else None
        if contents and not (
            self._may_write or (self._reading is not None and self._reading.finished)
        ):
            raise StreamNotReadError(
                f"{self.entity_type} {self.entity_id!r} was opened from event {self._after} "
                "and not read: read it (all() or project()) before writing"
            )
        return given

    def _events(self, contents: tuple[Content, ...], given: Mapping[str, str] | None,
                trace_context: Mapping[str, str]) -> list[Event]:
        """The events that writing the contents appends, with the metadata to store: those
        of the last attempt when it failed with its outcome unknown and this one is the same
        write again (same position, contents and metadata)."""
        self._may_write = True
        entity_id, entity_type, position = self.entity_id, self.entity_type, self.position
        unconfirmed = self._unconfirmed
        if unconfirmed is not None and unconfirmed == _Unconfirmed(position, contents, given):
            return unconfirmed.events
        stored = for_write(given, trace_context)
        now = datetime.now(UTC)
        return [
            # store_entity_id is the storage's to tell (the entity's first event's ID)
            Event(entity_id, entity_type, position + offset, now, content, store_event_id,
                  "", stored)
            for offset, (content, store_event_id) in enumerate(
                zip(contents, new_ids(len(contents)), strict=True), start=1
            )
        ]

    def _appended(self, events: list[Event]) -> None:
        self._written = events[-1].event_number
        self._unconfirmed = None

    def _outcome_unknown(self, contents: tuple[Content, ...], given: Mapping[str, str] | None,
                         events: list[Event]) -> None:
        """The write failed and may or may not have been applied: keep its events so that
        the same write again re-sends them."""
        self._unconfirmed = _Unconfirmed(events[0].event_number - 1, contents, given, events)


UNKNOWN_OUTCOME = (StorageUnavailableError, DurabilityError)


@dataclass(frozen=True)
class _Unconfirmed:
    """A write whose outcome is unknown: equal to a new attempt when that attempt starts at
    the same position with equal contents and metadata (the events do not take part)."""

    position: int
    contents: tuple[Content, ...]
    metadata: Mapping[str, str] | None
    events: list[Event] = field(default_factory=list, compare=False)


class Stream(StreamState):
    """One entity's events. Read with `all()` or `project()`, append with `write()`.

    `position` is the number of the last event read or written through this stream. A
    write appends at `position + 1`; if another writer got there first it raises
    `ConcurrencyError` and stores nothing.
    """

    def __init__(
        self, reader: Reader, write: WriteStored, entity_type: str, entity_id: str, after: int
    ) -> None:
        super().__init__(entity_type, entity_id, after)
        self._reader = reader
        self._write = write

    def all(self) -> Reading:
        """The entity's events after the opening number, upgraded, in order.

        Each call reads the storage again from where the stream was opened.
        """
        self._check_open()
        reading = self._reader.read(self.entity_type, self.entity_id, self._after)
        self._reading = reading
        return reading

    def project(self, handler: Handler) -> None:
        """Calls the handler with each event of `all()`; stops at the first exception."""
        self.all().feed(as_callable(handler))

    def write(
        self, *contents: Content, metadata: Mapping[str, str] | None = None
    ) -> list[Position]:
        """Appends the contents as events `position + 1 ..`, all or none, with `metadata`
        (see `es_workers.metadata`: limits, and the causation recorded automatically).
        Returns the events' log positions, consecutive (empty for a storage without a log).

        After StorageUnavailableError or DurabilityError, writing the same contents again on
        this Stream re-sends the same events: the write is applied exactly once."""
        given = self._writable(contents, metadata)
        if not contents:
            return []
        first, last = self.position + 1, self.position + len(contents)
        with append_span(self.entity_type, self.entity_id, first, last) as appending:
            events = self._events(contents, given, appending.metadata)
            appending.sent(events)
            try:
                positions = self._write(self.entity_type, events)
            except UNKNOWN_OUTCOME:
                self._outcome_unknown(contents, given, events)
                raise
        self._appended(events)
        return list(positions or ())

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
