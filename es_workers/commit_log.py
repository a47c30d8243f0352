"""Reading the log: every event in commit order (`Store.read_all`), and following it as
events are committed (`Store.follow`).

Each partition's log is in commit order. With several partitions, `read_all` reads each in
order and merges them by event time (the time of the write, ties by partition): an order
that keeps each partition's, not a global commit order (none exists across partitions;
on Redis Cluster they live on different servers). To resume, pass the positions read so
far (`LogReading.positions`), one per partition.

Upgrades apply to events read from the log as on entity reads, each event on its own
(an upgrade that needs an entity's earlier events sees them on entity reads only).
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator
from datetime import datetime
from types import TracebackType

from .errors import ConfigurationError
from .event import Event
from .ports import AsyncLogStorage, AsyncStorage, LogStorage, Storage
from .position import After, Position, after_by_partition
from .upgrade import AsyncReader, Reader

RECORD_EVERY_S = 1.0  # how often a named follower records how far it got while busy
WAIT_S = 0.25  # one wait for new events: also how soon `stop()` is seen


def log_storage(storage: Storage) -> LogStorage:
    if not isinstance(storage, LogStorage):
        raise ConfigurationError(
            f"{type(storage).__name__} keeps no log: read_all and follow need RedisStorage "
            "or InMemoryStorage")
    return storage


def _check_partitions(after: dict[int, int], partitions: int) -> None:
    beyond = sorted(p for p in after if not 0 <= p < partitions)
    if beyond:
        raise ValueError(f"after names partition {beyond[0]}, but the store has "
                         f"{partitions} (p0..p{partitions - 1})")


def _commit_order(event: Event) -> tuple[datetime, int]:
    return event.event_time, event.position.partition if event.position else 0


class LogReading(Iterator[Event]):
    """The events of the log after some positions, upgraded, in log order (see the module).

    `positions` says how far it got: one Position per partition read from, the last
    stored event taken (upgrades may drop events); pass it as `after` to go on."""

    def __init__(self, storage: LogStorage, reader: Reader, after: dict[int, int],
                 entity_types: Collection[str] | None, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        types = None if entity_types is None else frozenset(entity_types)
        if isinstance(entity_types, str):
            raise TypeError("entity_types is a collection of entity types, not one")
        self.after = after
        self._reader = reader
        self._left = limit
        _check_partitions(after, storage.partitions)
        logs = [storage.read_log(p, after.get(p, 0), types)
                for p in range(storage.partitions)]
        stored = logs[0] if len(logs) == 1 else heapq.merge(*logs, key=_commit_order)
        self._events = self._upgraded(stored)

    def _upgraded(self, stored: Iterator[Event]) -> Iterator[Event]:
        for event in stored:
            if event.position is not None:
                self.after[event.position.partition] = event.position.number
            yield from self._reader.upgraded(event)

    def __next__(self) -> Event:
        if self._left == 0:
            raise StopIteration
        event = next(self._events)
        if self._left is not None:
            self._left -= 1
        return event

    @property
    def positions(self) -> list[Position]:
        return [Position(p, n) for p, n in sorted(self.after.items())]


def read_all(storage: Storage, reader: Reader, after: After,
             entity_types: Collection[str] | None, limit: int | None) -> LogReading:
    return LogReading(log_storage(storage), reader, after_by_partition(after), entity_types,
                      limit)


class Follower(Iterator[Event]):
    """`Store.follow`: the log's events, then new ones as they are committed. Blocks.

    Iterate it (`for event in follower`); `stop()` from any thread ends the iteration
    within a wait (0.25 s); as a context manager it stops on exit. A named follower
    records how far it got (an event is done once the next one is asked for, or on a
    clean exit) and, given no `after`, goes on from there; the log is never trimmed past
    it."""

    def __init__(self, storage: Storage, reader: Reader, after: After,
                 entity_types: Collection[str] | None, name: str | None) -> None:
        self._storage = log_storage(storage)
        self._reader = reader
        self._types = entity_types
        self.name = name
        if name is not None and after is None:
            self._after = self._storage.followed(name)
        else:
            self._after = after_by_partition(after)
        if name is not None:  # every partition: trimming holds where it has read nothing yet
            self._after = {p: self._after.get(p, 0) for p in range(self._storage.partitions)}
        self._reading: LogReading | None = None
        self._stop = threading.Event()
        self._done: dict[int, int] = dict(self._after)  # what was handed out and finished
        self._recorded: dict[int, int] | None = None  # recorded at the first next()
        self._recorded_at = time.monotonic()

    @property
    def positions(self) -> list[Position]:
        """How far it got: the last stored event handed out, per partition."""
        return [Position(p, n) for p, n in sorted(self._after.items())]

    def stop(self) -> None:
        """Ends the iteration (from any thread): the next `next()` raises StopIteration."""
        self._stop.set()

    def __next__(self) -> Event:
        self._done = dict(self._after)
        while not self._stop.is_set():
            if self._reading is None:
                self._reading = LogReading(self._storage, self._reader, self._after,
                                           self._types, None)
            try:
                event = next(self._reading)
            except StopIteration:
                self._reading = None
                self._record()
                self._storage.wait_log(self._after, WAIT_S)
                continue
            if time.monotonic() - self._recorded_at >= RECORD_EVERY_S:
                self._record()
            return event
        self._record()
        raise StopIteration

    def _record(self) -> None:
        if self.name is None or self._done == self._recorded:
            return
        self._storage.record_followed(self.name, self._done)
        self._recorded, self._recorded_at = dict(self._done), time.monotonic()

    def __iter__(self) -> Follower:
        if self.name is not None and self._recorded is None:
            self._record()  # from now on, trimming keeps what it has not read
        return self

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
        if exc_type is None:  # the last event handed out was handled
            self._done = dict(self._after)
        self._record()


# -- asyncio: the same, awaited ------------------------------------------------------------


def async_log_storage(storage: AsyncStorage) -> AsyncLogStorage:
    if not isinstance(storage, AsyncLogStorage):
        raise ConfigurationError(
            f"{type(storage).__name__} keeps no log: read_all and follow need "
            "AsyncRedisStorage or AsyncInMemoryStorage")
    return storage


class AsyncLogReading(AsyncIterator[Event]):
    """`LogReading` for asyncio: `async for event in store.read_all(...)`; `positions`."""

    def __init__(self, storage: AsyncLogStorage, reader: AsyncReader, after: dict[int, int],
                 entity_types: Collection[str] | None, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if isinstance(entity_types, str):
            raise TypeError("entity_types is a collection of entity types, not one")
        self.after = after
        self._storage, self._reader, self._left = storage, reader, limit
        self._types = None if entity_types is None else frozenset(entity_types)
        self._heads: list[tuple[Event, AsyncIterator[Event]]] | None = None
        self._upgraded: Iterator[Event] = iter(())

    async def _start(self) -> list[tuple[Event, AsyncIterator[Event]]]:
        heads = []
        partitions = await self._storage.partitions_count()
        _check_partitions(self.after, partitions)
        for partition in range(partitions):
            log = self._storage.read_log(partition, self.after.get(partition, 0), self._types)
            first = await anext(log, None)
            if first is not None:
                heads.append((first, log))
        return heads

    async def _next_stored(self) -> Event | None:
        """The stored event that comes next: the earliest head of the partitions (each in
        its log order)."""
        if self._heads is None:
            self._heads = await self._start()
        heads = self._heads
        if not heads:
            return None
        index = min(range(len(heads)), key=lambda i: _commit_order(heads[i][0])
                    ) if len(heads) > 1 else 0
        event, log = heads[index]
        following = await anext(log, None)
        if following is None:
            del heads[index]
        else:
            heads[index] = (following, log)
        return event

    async def __anext__(self) -> Event:
        if self._left == 0:
            raise StopAsyncIteration
        while True:
            upgraded = next(self._upgraded, None)
            if upgraded is not None:
                break
            stored = await self._next_stored()
            if stored is None:
                raise StopAsyncIteration
            if stored.position is not None:
                self.after[stored.position.partition] = stored.position.number
            self._upgraded = self._reader.upgraded(stored)
        if self._left is not None:
            self._left -= 1
        return upgraded

    @property
    def positions(self) -> list[Position]:
        return [Position(p, n) for p, n in sorted(self.after.items())]


def async_read_all(storage: AsyncStorage, reader: AsyncReader, after: After,
                   entity_types: Collection[str] | None, limit: int | None) -> AsyncLogReading:
    return AsyncLogReading(async_log_storage(storage), reader, after_by_partition(after),
                           entity_types, limit)


class AsyncFollower(AsyncIterator[Event]):
    """`Follower` for asyncio: `async for event in follower`, `async with`; `stop()` from
    the loop or any thread ends it within a wait."""

    def __init__(self, storage: AsyncStorage, reader: AsyncReader, after: After,
                 entity_types: Collection[str] | None, name: str | None) -> None:
        self._storage = async_log_storage(storage)
        self._reader = reader
        self._types = entity_types
        self.name = name
        self._given = after
        self._after: dict[int, int] | None = None
        self._reading: AsyncLogReading | None = None
        self._stop = threading.Event()
        self._done: dict[int, int] = {}
        self._recorded: dict[int, int] = {}
        self._recorded_at = time.monotonic()

    @property
    def positions(self) -> list[Position]:
        return [Position(p, n) for p, n in sorted((self._after or {}).items())]

    def stop(self) -> None:
        self._stop.set()

    async def _start(self) -> dict[int, int]:
        if self.name is not None and self._given is None:
            after = await self._storage.followed(self.name)
        else:
            after = after_by_partition(self._given)
        if self.name is not None:  # every partition, recorded now: trimming holds there
            partitions = await self._storage.partitions_count()
            after = {p: after.get(p, 0) for p in range(partitions)}
            await self._storage.record_followed(self.name, after)
        self._done, self._recorded = dict(after), dict(after)
        return after

    async def __anext__(self) -> Event:
        if self._after is None:
            self._after = await self._start()
        self._done = dict(self._after)
        while not self._stop.is_set():
            if self._reading is None:
                self._reading = AsyncLogReading(self._storage, self._reader, self._after,
                                                self._types, None)
            try:
                event = await anext(self._reading)
            except StopAsyncIteration:
                self._reading = None
                await self._record()
                await self._storage.wait_log(self._after, WAIT_S)
                await asyncio.sleep(0)
                continue
            if time.monotonic() - self._recorded_at >= RECORD_EVERY_S:
                await self._record()
            return event
        await self._record()
        raise StopAsyncIteration

    async def _record(self) -> None:
        if self.name is None or self._done == self._recorded:
            return
        await self._storage.record_followed(self.name, self._done)
        self._recorded, self._recorded_at = dict(self._done), time.monotonic()

    async def __aenter__(self) -> AsyncFollower:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()
        if exc_type is None and self._after is not None:
            self._done = dict(self._after)
        await self._record()
