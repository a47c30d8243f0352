"""Helpers of the asyncio tests: async clients of the test servers; `BlockingStorage`,
which puts an async storage behind the sync `Storage` port so that the storage contract
tests (test_storage.py, test_stream.py, test_upgrades.py) run on it unchanged; and
`BlockingStore`, an AsyncStore behind a Store's blocking calls, so that a test of a
guarantee runs on both halves (see halves.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import fakeredis
import redis.asyncio
from pydantic import BaseModel

from es_workers import (
    AsyncInMemoryStorage,
    AsyncRedisStorage,
    AsyncStorage,
    AsyncStore,
    AsyncStream,
    Content,
    Event,
    Position,
    Snapshot,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
ASYNC_KINDS = ["async-memory", "async-fakeredis", "async-redis"]


def async_client(kind: str, url: str) -> redis.asyncio.Redis:
    """A fresh fakeredis server's async client, or one of the real Redis at `url`."""
    if kind.endswith("fakeredis"):
        client: redis.asyncio.Redis = fakeredis.FakeAsyncRedis(
            server=fakeredis.FakeServer(version=(7, 0))
        )
        return client
    return redis.asyncio.Redis.from_url(url)


def async_storage(kind: str, url: str, prefix: str) -> AsyncStorage:
    if kind.endswith("memory"):
        return AsyncInMemoryStorage()
    return AsyncRedisStorage(async_client(kind, url), prefix=prefix)


class BlockingStorage:
    """An AsyncStorage used through the sync Storage port: each call runs to completion on
    an event loop of its own. Reads stay lazy (one event per step)."""

    def __init__(self, storage: AsyncStorage) -> None:
        self.async_storage = storage
        self._runner = asyncio.Runner()

    def _run(self, awaitable: Awaitable[T]) -> T:
        async def wait() -> T:
            return await awaitable

        return self._runner.run(wait())

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        self.async_storage.register(entity_type, *content_types)

    def entity_types(self) -> list[str]:
        return self.async_storage.entity_types()

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Iterator[Event]:
        events: AsyncIterator[Event] = self.async_storage.read(entity_type, entity_id, after)
        while True:
            try:
                yield self._run(anext(events))
            except StopAsyncIteration:
                return

    def write(self, entity_type: str, events: Sequence[Event]) -> Sequence[Position] | None:
        return self._run(self.async_storage.write(entity_type, events))

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        return self._run(self.async_storage.entity_ids(entity_type, after, limit))

    def start_publish(self, *args: Any, **options: Any) -> None:
        raise NotImplementedError("an async storage has no publishing hook")

    def close(self) -> None:
        self._run(self.async_storage.close())
        self._runner.close()


class BlockingStore:
    """An AsyncStore used through a Store's blocking calls (`open`, `open_from`, `read`,
    `entity_ids`, `wait_for`, `close`), each run to completion on an event loop of its own.
    Built, it opens the AsyncStore (`async with`), as building a RedisStorage opens it: the
    start-up checks raise here."""

    def __init__(self, store: AsyncStore) -> None:
        self.async_store = store
        self._runner = asyncio.Runner()
        try:
            self.run(store.__aenter__())
        except BaseException:
            self._runner.close()
            raise

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wait() -> T:
            return await awaitable

        return self._runner.run(wait())

    def open(self, entity_type: str, entity_id: str) -> BlockingStream:
        return BlockingStream(self.async_store.open(entity_type, entity_id), self)

    def open_from(self, entity_type: str, entity_id: str, event_number: int) -> BlockingStream:
        return BlockingStream(self.async_store.open_from(entity_type, entity_id, event_number),
                              self)

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> list[Event]:
        async def events() -> list[Event]:
            return [e async for e in self.async_store.read(entity_type, entity_id, after)]

        return self.run(events())

    def entity_ids(self, entity_type: str, after: str | None = None,
                   limit: int = 100) -> tuple[list[str], str | None]:
        return self.run(self.async_store.entity_ids(entity_type, after, limit))

    def read_all(self, after: Any = None, **options: Any) -> list[Event]:
        async def events() -> list[Event]:
            return [e async for e in self.async_store.read_all(after, **options)]

        return self.run(events())

    def followed(self, name: str) -> list[Event]:
        """The events a follower named `name` has not done yet, up to the log's end."""
        async def events() -> list[Event]:
            found: list[Event] = []
            async with self.async_store.follow(name=name) as follower:
                async for event in follower:
                    found.append(event)
                    if len(found) == 1:
                        follower.stop()
            return found

        return self.run(events())

    def wait_for(self, entity_type: str, entity_id: str, event_number: int,
                 **options: Any) -> None:
        self.run(self.async_store.wait_for(entity_type, entity_id, event_number, **options))

    def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        return self.run(self.async_store.truncate_before(entity_type, entity_id, event_number))

    def tombstone(self, entity_type: str, entity_id: str) -> None:
        self.run(self.async_store.tombstone(entity_type, entity_id))

    def delete(self, entity_type: str, entity_id: str) -> None:
        self.run(self.async_store.delete(entity_type, entity_id))

    def save_snapshot(self, entity_type: str, entity_id: str, state: BaseModel, *,
                      event_number: int) -> None:
        self.run(self.async_store.save_snapshot(entity_type, entity_id, state,
                                                event_number=event_number))

    def load_snapshot(self, entity_type: str, entity_id: str,
                      state_type: type[M]) -> Snapshot[M] | None:
        return self.run(self.async_store.load_snapshot(entity_type, entity_id, state_type))

    def close(self) -> None:
        try:
            self.run(self.async_store.close())
        finally:
            self._runner.close()


class BlockingStream:
    """An AsyncStream used through a Stream's blocking calls."""

    def __init__(self, stream: AsyncStream, store: BlockingStore) -> None:
        self.async_stream = stream
        self._store = store

    @property
    def entity_id(self) -> str:
        return self.async_stream.entity_id

    @property
    def position(self) -> int:
        return self.async_stream.position

    def all(self) -> Iterator[Event]:
        """The events, read lazily as a Stream's are: one event per step, so an error is
        raised where the sync half raises it (after the events before it)."""
        events = self.async_stream.all()
        while True:
            try:
                yield self._store.run(anext(events))
            except StopAsyncIteration:
                return

    def write(self, *contents: Content, metadata: Mapping[str, str] | None = None) -> None:
        self._store.run(self.async_stream.write(*contents, metadata=metadata))

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.async_stream.close()
