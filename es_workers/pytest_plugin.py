"""Pytest fixtures for applications built on es_workers (loaded by pytest automatically).

- `es_redis`: a fresh fakeredis client (Redis 7.0 semantics, Lua included).
- `es_store_factory`: `es_store_factory(events={...}, upgrades={...})` builds a Store on
  RedisStorage over `es_redis`, with an InMemoryEventBus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from .redis.storage import RedisStorage
from .store import Store


@pytest.fixture
def es_redis() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
    yield client
    client.close()


@pytest.fixture
def es_store_factory(es_redis: fakeredis.FakeRedis) -> Callable[..., Store]:
    def build(**options: Any) -> Store:
        return Store(RedisStorage(es_redis, prefix="es-test"), **options)

    return build
