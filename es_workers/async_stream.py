"""AsyncStream: `Stream` for asyncio. The position, the write checks and the events a write
appends are `StreamState`'s, shared with `Stream`; only the I/O is awaited."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType

from .event import Content, Event, Handler, as_callable
from .position import Position
from .stream import UNKNOWN_OUTCOME, StreamState
from .tracing import append_span
from .upgrade import AsyncReader, AsyncReading

AsyncWriteStored = Callable[[str, Sequence[Event]], Awaitable[Sequence[Position] | None]]
"""An async storage's `write(entity_type, events)`."""


class AsyncStream(StreamState):
    """One entity's events, awaited: `async for event in stream.all()`,
    `await stream.project(handler)`, `await stream.write(...)`; `async with` closes it.

    `position` and the concurrency rules are those of `Stream`.
    """

    def __init__(
        self,
        reader: AsyncReader,
        write: AsyncWriteStored,
        entity_type: str,
        entity_id: str,
        after: int,
    ) -> None:
        super().__init__(entity_type, entity_id, after)
        self._reader = reader
        self._write = write

    def all(self) -> AsyncReading:
        """The entity's events after the opening number, upgraded, in order.

        Each call reads the storage again from where the stream was opened.
        """
        self._check_open()
        reading = self._reader.read(self.entity_type, self.entity_id, self._after)
        self._reading = reading
        return reading

    async def project(self, handler: Handler) -> None:
        """Calls the handler (a function or `async def`) with each event of `all()`; stops
        at the first exception."""
        handle = as_callable(handler)
        async for event in self.all():
            result = handle(event)
            if inspect.isawaitable(result):
                await result

    async def write(
        self, *contents: Content, metadata: Mapping[str, str] | None = None
    ) -> list[Position]:
        """Appends the contents as events `position + 1 ..`, all or none, with `metadata`,
        as `Stream.write` (causation from the event being handled included); returns their
        log positions."""
        given = self._writable(contents, metadata)
        if not contents:
            return []
        first, last = self.position + 1, self.position + len(contents)
        with append_span(self.entity_type, self.entity_id, first, last) as appending:
            events = self._events(contents, given, appending.metadata)
            appending.sent(events)
            try:
                positions = await self._write(self.entity_type, events)
            except UNKNOWN_OUTCOME:
                self._outcome_unknown(contents, given, events)
                raise
        self._appended(events)
        return list(positions or ())

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
