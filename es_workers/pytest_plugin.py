"""Pytest fixtures for applications built on es_workers, opt-in: a project loads them with
`pytest_plugins = ["es_workers.pytest_plugin"]` in its top conftest.py, or `-p
es_workers.pytest_plugin` (pytest does not load them into every run of an environment that
merely has es_workers installed).

- `es_redis`: a fresh fakeredis client (Redis 7.0 semantics, Lua included); fakeredis is
  the `demo` extra, imported only when the fixture is used, so that pytest starts in a
  project that installed es_workers without it.
- `es_store_factory`: `es_store_factory(events={...}, upgrades={...})` builds a Store on
  RedisStorage over `es_redis`, with an InMemoryEventBus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .app import Store
from .redis.storage import RedisStorage

if TYPE_CHECKING:
    import fakeredis


@pytest.fixture
def es_redis() -> Iterator[fakeredis.FakeRedis]:
    try:
        import fakeredis
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the es_redis fixture needs fakeredis: pip install 'es_workers[demo]'",
            name="fakeredis",
        ) from error
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
    yield client
    client.close()


@pytest.fixture
def es_store_factory(es_redis: fakeredis.FakeRedis) -> Callable[..., Store]:
    def build(**options: Any) -> Store:
        return Store(RedisStorage(es_redis, prefix="es-test"), **options)

    return build
