"""Shared fixtures: every storage test runs on fakeredis and on a real Redis.

The real Redis comes from ES_REDIS_URL (default redis://127.0.0.1:6379/0). If it cannot be
reached the real-Redis tests are skipped, unless ES_REQUIRE_REDIS=1 (CI sets it): then
they fail, so a missing server never passes silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import dramatiq
import fakeredis
import pytest
import redis
import redis.asyncio
from async_kit import ASYNC_KINDS, BlockingStorage, BlockingStore, async_storage

from es_workers import (
    AsyncInMemoryStorage,
    AsyncRedisStorage,
    AsyncStore,
    Content,
    Event,
    InMemoryStorage,
    RedisStorage,
    Store,
)
from es_workers.ids import new_ids

pytest_plugins = [
    "conftest_servers",  # Cluster, Sentinel, TLS, ACL, AOF, proxy, RabbitMQ
    "es_workers.pytest_plugin",  # es_redis, es_store_factory: opt-in, as for users
]

REDIS_URL = os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("ES_REQUIRE_REDIS") == "1"


def real_redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        if REQUIRE_REDIS:
            pytest.fail(f"ES_REQUIRE_REDIS=1 but Redis at {REDIS_URL} is unreachable: {error}")
        pytest.skip(f"no Redis at {REDIS_URL} ({error}); set ES_REQUIRE_REDIS=1 to fail instead")
    return client


DEFAULT_PREFIX_KEYS = pytest.StashKey[set[bytes] | None]()


def default_prefix_keys() -> set[bytes] | None:
    """The keys under the default prefix "es" on the shared Redis (None: unreachable). The
    tests never write there: that is where an app on the same server keeps its events."""
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as client:
            return set(client.scan_iter("es:*", count=1000))
    except redis.RedisError:
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[DEFAULT_PREFIX_KEYS] = default_prefix_keys()  # before any test module loads


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run if a test (or a module a test imports) wrote under the default prefix."""
    before, after = session.config.stash[DEFAULT_PREFIX_KEYS], default_prefix_keys()
    if before is None or after is None or not (after - before):
        return
    written = sorted(key.decode(errors="replace") for key in after - before)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"FAILED: the tests wrote under the default prefix 'es' of "
                            f"{REDIS_URL}: {written[:10]}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def client_beside(redis_client: redis.Redis, request: pytest.FixtureRequest, *,
                  decode_responses: bool, use_asyncio: bool = False) -> Any:
    """Another client, sync or redis.asyncio, of the server behind the test's `redis_client`
    (fakeredis, the real Redis, or the session's cluster)."""
    if isinstance(redis_client, fakeredis.FakeRedis):
        fake = fakeredis.FakeAsyncRedis if use_asyncio else fakeredis.FakeRedis
        return fake(server=redis_client.connection_pool.connection_kwargs["server"],
                    decode_responses=decode_responses)
    if isinstance(redis_client, redis.RedisCluster):
        cluster = request.getfixturevalue("redis_cluster")
        make = cluster.async_client if use_asyncio else cluster.client
        return make(decode_responses=decode_responses)
    real = redis.asyncio.Redis if use_asyncio else redis.Redis
    return real.from_url(REDIS_URL, decode_responses=decode_responses)


@pytest.fixture(params=["sync", "async"])
def half(request: pytest.FixtureRequest) -> str:
    """Which half of es_workers a test of a guarantee runs on: Store or AsyncStore (build
    the store with tests/halves.py)."""
    return str(request.param)


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """fakeredis, the single real Redis, or a 3-master Redis Cluster (one per session)."""
    return str(request.param)


@pytest.fixture
def redis_client(backend: str, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    if backend == "fakeredis":
        client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
    elif backend == "cluster":
        client = request.getfixturevalue("redis_cluster").client()
    else:
        client = real_redis()
    yield client
    client.close()


# -- The cluster backend: tests marked single_redis do not run on it -------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselects the cluster backend of tests marked `single_redis` (they use what only one
    Redis has, e.g. its connection pool or a broker on the same server)."""
    keep, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        on_cluster = params is not None and "cluster" in (
            params.params.get("backend"), params.params.get("any_storage")
        )
        (dropped if on_cluster and item.get_closest_marker("single_redis") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    delete_prefix(redis_client, name)


@pytest.fixture
def storage(redis_client: redis.Redis, prefix: str) -> RedisStorage:
    return RedisStorage(redis_client, prefix=prefix)


class Opened(Content):
    owner: str


class Deposited(Content):
    amount: int


class Withdrawn(Content):
    amount: int


ACCOUNT_EVENTS: dict[str, list[type[Content]]] = {"account": [Opened, Deposited, Withdrawn]}


@pytest.fixture
def make_store(storage: RedisStorage) -> Callable[..., Store]:
    """Builds a Store on the test's RedisStorage; account events registered by default."""

    def build(**options: object) -> Store:
        options.setdefault("events", ACCOUNT_EVENTS)
        return Store(storage, **options)  # type: ignore[arg-type]

    return build


@pytest.fixture(params=["fakeredis", "redis", "cluster", "memory"])
def any_storage(request: pytest.FixtureRequest) -> Iterator[RedisStorage | InMemoryStorage]:
    """Each kind of Storage: RedisStorage on fakeredis, on a real Redis and on a Redis
    Cluster, InMemoryStorage.

    For tests of behaviour every Storage must share (the Go library's storage contract).
    A module that also runs them on the async storages parametrizes it with ALL_STORAGES.
    """
    if request.param == "async-cluster":
        yield from blocking_async_cluster_storage(request.getfixturevalue("redis_cluster"))
        return
    if request.param.startswith("async-"):
        yield from blocking_async_storage(request.param)
        return
    if request.param == "memory":
        yield InMemoryStorage()
        return
    client: redis.Redis = (
        fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
        if request.param == "fakeredis"
        else request.getfixturevalue("redis_cluster").client()
        if request.param == "cluster"
        else real_redis()
    )
    name = f"t-{uuid.uuid4().hex[:12]}"
    try:
        yield RedisStorage(client, prefix=name)
    finally:
        delete_prefix(client, name)
        client.close()


@pytest.fixture
def anyio_backend() -> str:
    """The event loop of the async tests (`pytest.mark.anyio`): asyncio only."""
    return "asyncio"


ALL_STORAGES = pytest.mark.parametrize(
    "any_storage", ["fakeredis", "redis", "cluster", "memory", *ASYNC_KINDS, "async-cluster"],
    indirect=True,
)


def blocking_async_storage(kind: str) -> Iterator[Any]:
    """An async storage of `kind` behind the sync port (async_kit.BlockingStorage)."""
    if kind == "async-redis":
        real_redis().close()  # skips, or fails under ES_REQUIRE_REDIS, without a server
    name = f"t-{uuid.uuid4().hex[:12]}"
    storage = BlockingStorage(async_storage(kind, REDIS_URL, name))
    try:
        yield storage
    finally:
        storage.close()
        if kind == "async-redis":
            with redis.Redis.from_url(REDIS_URL) as client:
                delete_prefix(client, name)


def blocking_async_cluster_storage(cluster: Any) -> Iterator[Any]:
    """An AsyncRedisStorage on the session's Redis Cluster, behind the sync port."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    storage = BlockingStorage(AsyncRedisStorage(cluster.async_client(), prefix=name))
    try:
        yield storage
    finally:
        storage.close()
        with cluster.client() as client:
            delete_prefix(client, name)


@pytest.fixture
def make_any_store(any_storage: RedisStorage | InMemoryStorage) -> Callable[..., Store]:
    """`make_store` over `any_storage`."""

    def build(**options: object) -> Store:
        options.setdefault("events", ACCOUNT_EVENTS)
        return Store(any_storage, **options)  # type: ignore[arg-type]

    return build


# Delivery tests: the publisher's timings shortened, and the broker users get.


@pytest.fixture
def fast_storage(redis_client: redis.Redis, prefix: str) -> RedisStorage:
    from apps.delivery_kit import FAST_PUBLISHER

    return RedisStorage(redis_client, prefix=prefix, publisher=FAST_PUBLISHER)


@pytest.fixture
def broker(redis_client: redis.Redis, backend: str) -> Iterator[dramatiq.Broker]:
    from apps.delivery_kit import redis_broker

    with redis_broker(redis_client, backend, REDIS_URL) as made:
        yield made


def events_of(
    entity_id: str, *contents: Content, after: int = 0, entity_type: str = "account"
) -> list[Event]:
    """Events as Stream.write builds them: numbered after `after`, fresh store_event_ids."""
    now = datetime.now(UTC)
    return [
        Event(
            entity_id=entity_id,
            entity_type=entity_type,
            event_number=after + offset,
            event_time=now,
            content=content,
            store_event_id=new_ids(1)[0],
            store_entity_id="",
        )
        for offset, content in enumerate(contents, start=1)
    ]


# Both halves on every backend


@pytest.fixture(params=["fakeredis", "redis", "cluster", "memory"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def half_store(store_kind: str, half: str,
               request: pytest.FixtureRequest) -> Iterator[Store | BlockingStore]:
    """A Store, or an AsyncStore behind BlockingStore (`half`), on each kind of storage
    (`store_kind`), account events registered; its Redis keys deleted afterwards. For a
    guarantee of both halves on every backend."""
    if store_kind == "memory":
        if half == "sync":
            yield Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
        else:
            blocking = BlockingStore(AsyncStore(AsyncInMemoryStorage(), events=ACCOUNT_EVENTS))
            yield blocking
            blocking.close()
        return
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    sync_client: Any
    async_client: Any
    if store_kind == "fakeredis":
        server = fakeredis.FakeServer(version=(7, 0))
        sync_client = fakeredis.FakeRedis(server=server)
        async_client = fakeredis.FakeAsyncRedis(server=server)
    elif store_kind == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        sync_client, async_client = cluster.client(), cluster.async_client()
    else:
        sync_client = real_redis()
        async_client = redis.asyncio.Redis.from_url(REDIS_URL)
    store: Store | BlockingStore
    if half == "sync":
        store = Store(RedisStorage(sync_client, prefix=prefix), events=ACCOUNT_EVENTS)
    else:
        store = BlockingStore(AsyncStore(AsyncRedisStorage(async_client, prefix=prefix),
                                         events=ACCOUNT_EVENTS))
    try:
        yield store
    finally:
        if isinstance(store, BlockingStore):
            store.close()
        delete_prefix(sync_client, prefix)
        sync_client.close()
