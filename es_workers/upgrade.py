"""Event upgrades (upcasting), and the one reader that applies them.

An upgrade is a callable `upgrade(events: Iterator[Event]) -> Iterator[Event]`. It sees the
events of one entity in `event_number` order, and only those being read (opening a stream
from event 3 hides events 1 and 2 from it). Every read goes through `Reading`: a stream's
`all()`, `Store.project`, a subscriber's delivery and the publisher of a bus that takes
events, so upgrades apply the same way everywhere; `AsyncReading` is its asyncio form.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol, TypeAlias

from .event import Event
from .names import check_entity_type

EventUpgrade: TypeAlias = Callable[[Iterator[Event]], Iterator[Event]]
ReadStored: TypeAlias = Callable[[str, str, int], Iterator[Event]]
"""A storage's `read(entity_type, entity_id, after)`: events as stored."""
AsyncReadStored: TypeAlias = Callable[[str, str, int], AsyncIterator[Event]]
"""An async storage's `read(entity_type, entity_id, after)`."""


class DeletedThrough(Protocol):
    """Where a read learns that it passed over a deletion (`Store.delete`): the number of
    the entity's last event before it, once the read found it (0: none)."""

    deleted_through: int


class Deletion:
    """A `DeletedThrough` a storage fills in as it reads."""

    __slots__ = ("deleted_through",)

    def __init__(self, deleted_through: int = 0) -> None:
        self.deleted_through = deleted_through


class StoredEvents(Iterator[Event]):
    """A storage's read of one entity that can tell, once read, that it went on past a
    deletion: a deleted entity reads as if it began after its old events, and a stream
    that read it must write after them. Iterating it iterates `events` directly (no layer
    per event)."""

    __slots__ = ("_events", "deletion")

    def __init__(self, events: Iterator[Event], deletion: DeletedThrough) -> None:
        self._events, self.deletion = events, deletion

    def __iter__(self) -> Iterator[Event]:
        return self._events

    def __next__(self) -> Event:
        return next(self._events)


class AsyncStoredEvents(AsyncIterator[Event]):
    """`StoredEvents` of an async storage."""

    __slots__ = ("_events", "deletion")

    def __init__(self, events: AsyncIterator[Event], deletion: DeletedThrough) -> None:
        self._events, self.deletion = events, deletion

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events

    async def __anext__(self) -> Event:
        return await anext(self._events)


def deleted_through(stored: object) -> int:
    """The last event number before a deletion a finished read passed over (0: none)."""
    if isinstance(stored, StoredEvents | AsyncStoredEvents):
        return stored.deletion.deleted_through
    return 0


def check_upgrades(upgrades: Mapping[str, Sequence[EventUpgrade]]) -> None:
    """Refuses upgrades that are not callables, naming the entity type."""
    for entity_type, chain in upgrades.items():
        check_entity_type(entity_type)
        for upgrade in chain:
            if not callable(upgrade):
                raise TypeError(f"upgrade {upgrade!r} for {entity_type!r} is not callable")


def apply_upgrades(events: Iterable[Event], upgrades: Sequence[EventUpgrade]) -> Iterator[Event]:
    """Chains the upgrades in order: the first one's output is the second one's input."""
    stream: Iterator[Event] = iter(events)
    for upgrade in upgrades:
        stream = upgrade(stream)
    return stream


class Reading(Iterator[Event]):
    """The upgraded events of one entity after `after`, read lazily.

    `position` is the number of the last *stored* event read so far: an upgrade may drop or
    merge events, and a reader that records how far it got (a stream's position, a
    subscriber's checkpoint) must count those too. `finished` turns true once the storage
    had nothing more to give.
    """

    __slots__ = ("_events", "_source", "_stored", "finished", "position")

    def __init__(
        self, stored: Iterator[Event], upgrades: Sequence[EventUpgrade], after: int
    ) -> None:
        self.position = after
        self.finished = False
        self._source = stored
        self._stored = iter(stored)
        # Without upgrades __next__ reads the storage directly: hydrating is read-bound, and
        # a generator layer per event costs ~10% of it.
        self._events = apply_upgrades(self._tracked(), upgrades) if upgrades else None

    def __next__(self) -> Event:
        if self._events is not None:
            return next(self._events)
        try:
            event = next(self._stored)
        except StopIteration:
            self._finish()
            raise
        self.position = event.event_number
        return event

    def _finish(self) -> None:
        """The storage had nothing more: past a deletion with no event since, the position
        is the deleted events' last (a write goes on after them)."""
        self.finished = True
        self.position = max(self.position, deleted_through(self._source))

    def feed(self, handle: Callable[[Event], object]) -> None:
        """Calls `handle` with each event left, in order, as a `for` loop over the reading
        would, with one Python call per event less (hydrating a long entity is read-bound).
        Stops at the first exception, which it raises."""
        if self._events is not None:
            for event in self._events:
                handle(event)
            return
        last: Event | None = None
        try:
            for last in self._stored:
                handle(last)
        finally:
            if last is not None:
                self.position = last.event_number
        self._finish()

    def _tracked(self) -> Iterator[Event]:
        for event in self._stored:
            self.position = event.event_number
            yield event
        self._finish()


class Reader:
    """Reads entities from a storage through the upgrades registered per entity type."""

    def __init__(
        self, read_stored: ReadStored, upgrades: Mapping[str, Sequence[EventUpgrade]]
    ) -> None:
        self._read_stored = read_stored
        self._upgrades = {entity_type: list(chain) for entity_type, chain in upgrades.items()}

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Reading:
        stored = self._read_stored(entity_type, entity_id, after)
        return self.reading(entity_type, stored, after)

    def reading(self, entity_type: str, stored: Iterator[Event], after: int) -> Reading:
        """The upgraded events of stored events already read (those after `after`)."""
        return Reading(stored, self._upgrades.get(entity_type, ()), after)

    def upgraded(self, event: Event) -> Iterator[Event]:
        """One stored event through its type's upgrades, alone (a log read: the events
        of other entities come between an entity's events)."""
        upgrades = self._upgrades.get(event.entity_type)
        return apply_upgrades((event,), upgrades) if upgrades else iter((event,))

    def read_range(self, entity_type: str, entity_id: str, first: int, last: int) -> list[Event]:
        """The upgraded events read from stored events `first..last`."""
        reading = self.read(entity_type, entity_id, first - 1)
        events = []
        for event in reading:
            if reading.position > last:
                break
            events.append(event)
        return events


class AsyncReading(AsyncIterator[Event]):
    """`Reading` for an async storage: `async for event in reading`, same `position` and
    `finished`.

    Upgrades are synchronous iterators over the whole entity, so with upgrades the entity's
    stored events are read first (every page), then upgraded as `Reading` does; without
    them events come page by page as read.
    """

    __slots__ = ("_source", "_stored", "_upgraded", "_upgrades", "finished", "position")

    def __init__(
        self, stored: AsyncIterator[Event], upgrades: Sequence[EventUpgrade], after: int
    ) -> None:
        self.position = after
        self.finished = False
        self._source = stored
        self._stored = aiter(stored)
        self._upgrades = upgrades
        self._upgraded: Reading | None = None

    async def __anext__(self) -> Event:
        if not self._upgrades:
            try:
                event = await anext(self._stored)
            except StopAsyncIteration:
                self.finished = True
                self.position = max(self.position, deleted_through(self._source))
                raise
            self.position = event.event_number
            return event
        if self._upgraded is None:
            stored = [event async for event in self._stored]
            self._upgraded = Reading(
                StoredEvents(iter(stored), self._source.deletion)
                if isinstance(self._source, AsyncStoredEvents) else iter(stored),
                self._upgrades, self.position)
        try:
            return next(self._upgraded)
        except StopIteration:
            raise StopAsyncIteration from None
        finally:
            self.position, self.finished = self._upgraded.position, self._upgraded.finished


class AsyncReader:
    """`Reader` for an async storage: the same upgrades per entity type."""

    def __init__(
        self, read_stored: AsyncReadStored, upgrades: Mapping[str, Sequence[EventUpgrade]]
    ) -> None:
        self._read_stored = read_stored
        self._upgrades = {entity_type: list(chain) for entity_type, chain in upgrades.items()}

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> AsyncReading:
        stored = self._read_stored(entity_type, entity_id, after)
        return AsyncReading(stored, self._upgrades.get(entity_type, ()), after)

    def upgraded(self, event: Event) -> Iterator[Event]:
        """`Reader.upgraded`: one stored event of a log read through its upgrades."""
        return apply_upgrades((event,), self._upgrades.get(event.entity_type, ()))
