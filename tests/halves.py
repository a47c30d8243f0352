"""Both halves of es_workers, `Store` (redis-py) and `AsyncStore` (redis.asyncio), behind one
blocking interface: a test of a guarantee takes the `half` fixture ("sync" or "async") and
builds its store with these helpers, so that the same test body checks that both halves
give the same errors and guarantees (DESIGN.md, guarantee 9)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio
from async_kit import BlockingStore
from conftest import ACCOUNT_EVENTS
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    Content,
    Event,
    RedisStorage,
    Settings,
    Store,
)
from es_workers.ports import Bus
from es_workers.wiring import async_redis_client, redis_client

HALVES = ("sync", "async")
AnyStore = Store | BlockingStore


def client_of(half: str, url: str) -> Any:
    """A client of `url` for the half, without any retry (a failure shows at once)."""
    if half == "sync":
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))
    return redis.asyncio.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0))


def client_from(half: str, settings: Settings) -> Any:
    """The client of the half that `from_settings` builds: the settings' Redis, timeouts
    and retries."""
    return (redis_client if half == "sync" else async_redis_client)(settings)


def store_on(half: str, client: Any, *, bus: Bus | None = None,
             events: Mapping[str, list[type[Content]]] = ACCOUNT_EVENTS,
             **storage_options: Any) -> AnyStore:
    """A store of the half on `client` (its kind: see `client_of`), `events` (account events
    by default) registered; `storage_options` go to RedisStorage / AsyncRedisStorage
    (prefix, durability, partitions, encryption...). Raises what opening the storage
    raises."""
    if half == "sync":
        return Store(RedisStorage(client, **storage_options), bus=bus, events=events)
    return BlockingStore(AsyncStore(AsyncRedisStorage(client, **storage_options), bus=bus,
                                    events=events))


def store_from_settings(half: str, settings: Settings) -> AnyStore:
    """`Store.from_settings` or `AsyncStore.from_settings`, account events registered."""
    if half == "sync":
        return Store.from_settings(events=ACCOUNT_EVENTS, settings=settings)
    return BlockingStore(AsyncStore.from_settings(events=ACCOUNT_EVENTS, settings=settings))


def followed(store: AnyStore, name: str) -> list[Event]:
    """The first event a follower named `name` has not done yet (follow(name=...) reads and
    records its progress in Redis)."""
    if isinstance(store, BlockingStore):
        return store.followed(name)
    found: list[Event] = []
    with store.follow(name=name) as follower:
        for event in follower:
            found.append(event)
            follower.stop()
    return found


def close(store: AnyStore) -> None:
    """Closes the store and its Redis client."""
    if isinstance(store, Store):
        store.storage.close()
        store.close()
    else:
        store.close()
