"""Helpers of the asyncio tests: async clients of the test servers, and `BlockingStorage`,
which puts an async storage behind the sync `Storage` port so that the storage contract
tests (test_storage.py, test_stream.py, test_upgrades.py) run on it unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any, TypeVar

import fakeredis
import redis.asyncio

from es_workers import (
    AsyncInMemoryStorage,
    AsyncRedisStorage,
    AsyncStorage,
    Content,
    Event,
    Position,
)

T = TypeVar("T")
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

    def start_publish(self, *args: Any) -> None:
        raise NotImplementedError("an async storage has no publishing hook")

    def close(self) -> None:
        self._run(self.async_storage.close())
        self._runner.close()
