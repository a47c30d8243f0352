"""One composition root (issue 19): one connection spec builds the redis-py and the
redis.asyncio clients, so every option reaches both halves the same way or is refused by
both with the same clear error; the core (`stream`, `store`, `async_store`) loads no
adapter; `es_workers.Store` and `es_workers.AsyncStore` keep their default in-memory bus
and `from_settings`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis.asyncio
from conftest import ACCOUNT_EVENTS, REDIS_URL, Opened, delete_prefix
from halves import client_from, close, store_from_settings
from redis.cluster import RedisCluster
from servers import AclUser, RedisClusterServers, RedisSentinelServers

import es_workers
from es_workers import (
    AsyncInMemoryStorage,
    AsyncStore,
    ConfigurationError,
    InMemoryEventBus,
    InMemoryStorage,
    RedisStorage,
    Settings,
    Store,
)
from es_workers import async_store as core_async_store
from es_workers import store as core_store

PASSWORD = "s3cret-pa55"
ADAPTER_LIBRARIES = ("dramatiq", "redis", "pydantic_settings", "fakeredis")
ADAPTERS = ("es_workers.redis", "es_workers.memory", "es_workers.workers",
            "es_workers.settings", "es_workers.connection", "es_workers.wiring",
            "es_workers.app")


def loaded_after_import(module: str) -> list[str]:
    """The adapter libraries and modules in `sys.modules` of a fresh interpreter that
    imported `module`."""
    code = (f"import json, sys, {module}\n"
            f"names = {[*ADAPTER_LIBRARIES, *ADAPTERS]!r}\n"
            "print(json.dumps(sorted(n for n in names if n in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    found: list[str] = json.loads(done.stdout)
    return found


@pytest.mark.parametrize("module", ["es_workers.stream", "es_workers.store",
                                    "es_workers.async_store", "es_workers.async_stream"])
def test_importing_the_core_loads_no_adapter_and_none_of_their_libraries(module: str) -> None:
    assert loaded_after_import(module) == []


def test_the_public_stores_are_the_core_classes_extended_by_the_composition_root() -> None:
    assert issubclass(es_workers.Store, core_store.Store)
    assert issubclass(es_workers.AsyncStore, core_async_store.AsyncStore)
    assert es_workers.Store.__module__ == es_workers.AsyncStore.__module__ == "es_workers.app"


def test_a_public_store_given_no_bus_keeps_its_subscribers_on_an_in_memory_bus() -> None:
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    store.subscribe("account", "seen", lambda event: None)
    assert isinstance(store.bus, InMemoryEventBus)
    assert store.subscriber_ids("account") == ["seen"]
    assert isinstance(AsyncStore(AsyncInMemoryStorage()).bus, InMemoryEventBus)


@pytest.mark.parametrize("core", [core_store.Store, core_async_store.AsyncStore])
def test_a_core_store_given_no_bus_asks_for_one(core: type[Any]) -> None:
    storage = InMemoryStorage() if core is core_store.Store else AsyncInMemoryStorage()
    with pytest.raises(ConfigurationError, match="needs a bus: pass bus=") as raised:
        core(storage)
    assert f"es_workers.{core.__name__}" in str(raised.value)


# -- The connection spec: every option on both halves, or refused by both ---------------

TLS_URL = ("rediss://127.0.0.1:1/2?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/c.pem"
           "&ssl_keyfile=/etc/k.pem&ssl_cert_reqs=optional&ssl_check_hostname=false"
           "&ssl_ciphers=HIGH&protocol=3&client_name=bank&max_connections=7")
TAKEN = {"host": "127.0.0.1", "port": 1, "db": 2, "username": "app", "password": PASSWORD,
         "ssl_ca_certs": "/etc/ca.pem", "ssl_certfile": "/etc/c.pem",
         "ssl_keyfile": "/etc/k.pem", "ssl_check_hostname": False, "ssl_ciphers": "HIGH",
         "protocol": 3, "client_name": "bank", "socket_connect_timeout": 0.25,
         "socket_timeout": 1.5, "health_check_interval": 30}


def options_of(client: Any) -> dict[str, Any]:
    """What a built client will connect with: its pool's connection options (the retry's
    count in `retries`), the pool size, and whether it speaks TLS."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    retry = kwargs.pop("retry")
    shown = {name: kwargs.get(name) for name in TAKEN}
    ssl_cert_reqs = kwargs.get("ssl_cert_reqs")
    return {**shown, "retries": retry._retries, "max_connections": pool.max_connections,
            "tls": "SSL" in pool.connection_class.__name__,
            "ssl_cert_reqs": getattr(ssl_cert_reqs, "name", ssl_cert_reqs)}


def test_every_option_of_the_connection_spec_reaches_both_clients_the_same_way() -> None:
    settings = Settings(redis_url=TLS_URL, redis_cluster="false", redis_username="app",
                        redis_password=PASSWORD, redis_connect_timeout_ms=250,
                        redis_timeout_ms=1500)
    found = {half: options_of(client_from(half, settings)) for half in ("sync", "async")}
    assert found["sync"] == {**TAKEN, "retries": 3, "max_connections": 7, "tls": True,
                             "ssl_cert_reqs": "optional"}
    assert found["async"] == found["sync"]


def test_sentinel_options_reach_both_clients_the_same_way() -> None:
    settings = Settings(redis_sentinels="127.0.0.1:1,127.0.0.1:2", redis_db=4,
                        redis_sentinel_master="events", redis_username="app",
                        redis_password=PASSWORD, redis_connect_timeout_ms=250,
                        redis_timeout_ms=1500)
    found = {}
    for half in ("sync", "async"):
        client = client_from(half, settings)
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        found[half] = {"service": pool.service_name, "retries": kwargs.pop("retry")._retries,
                       **{name: kwargs.get(name) for name in (
                           "db", "username", "password", "socket_connect_timeout",
                           "socket_timeout", "health_check_interval")},
                       "sentinels": [(s.connection_pool.connection_kwargs["host"],
                                      s.connection_pool.connection_kwargs["port"],
                                      s.connection_pool.connection_kwargs["socket_timeout"])
                                     for s in pool.sentinel_manager.sentinels]}
    assert found["sync"] == {"service": "events", "retries": 3, "db": 4, "username": "app",
                             "password": PASSWORD, "socket_connect_timeout": 0.25,
                             "socket_timeout": 1.5, "health_check_interval": 30,
                             "sentinels": [("127.0.0.1", 1, 1.5), ("127.0.0.1", 2, 1.5)]}
    assert found["async"] == found["sync"]


@pytest.mark.parametrize(("query", "named"), [
    ("socket_timeout=1", "ES_REDIS_TIMEOUT_MS"),
    ("timeout=1", "ES_REDIS_TIMEOUT_MS"),
    ("socket_connect_timeout=1", "ES_REDIS_CONNECT_TIMEOUT_MS"),
    ("retry_on_timeout=true", "timeouts and retries are settings"),
    ("retry_on_error=ConnectionError", "timeouts and retries are settings"),  # sync-only
    ("health_check_interval=5", "timeouts and retries are settings"),
    ("ssl_ca_path=/etc/ssl", "ssl_ca_certs"),  # no async RedisCluster takes it
    ("ssl_validate_ocsp=true", "ssl_ca_certs"),  # redis-py only
    ("ssl_cert_reqs=maybe", "must be one of none, optional, required"),
    ("ssl_check_hostname=perhaps", "must be true or false"),
    ("protocol=4", "must be one of 2, 3"),
    ("max_connections=0", "must be a whole number >= 1"),
])
def test_a_url_option_not_built_alike_is_refused_by_both_halves_with_the_same_error(
    half: str, query: str, named: str
) -> None:
    option = query.partition("=")[0]
    settings = Settings(redis_url=f"rediss://app:{PASSWORD}@127.0.0.1:1/0?{query}",
                        redis_cluster="false")
    with pytest.raises(ConfigurationError) as raised:
        client_from(half, settings)
    message = str(raised.value)
    assert message.startswith(f"ES_REDIS_URL: the URL's option {option}")
    assert named in message
    assert PASSWORD not in message


def test_a_refused_url_option_gets_the_same_message_from_both_halves() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0?socket_timeout=1")
    messages = set()
    for half in ("sync", "async"):
        with pytest.raises(ConfigurationError) as raised:
            client_from(half, settings)
        messages.add(str(raised.value))
    assert len(messages) == 1


def test_a_cluster_through_a_unix_socket_is_refused_by_both_halves(half: str) -> None:
    settings = Settings(redis_url="unix:///run/redis.sock", redis_cluster="true")
    with pytest.raises(ConfigurationError, match="ES_REDIS_CLUSTER=true: a Redis Cluster is "
                                                 "reached over TCP"):
        client_from(half, settings)


def test_the_connection_spec_never_shows_the_password() -> None:
    from es_workers.connection import RedisConnection

    spec = RedisConnection.from_settings(Settings(redis_url="redis://127.0.0.1:1/0",
                                                  redis_password=PASSWORD))
    assert PASSWORD not in repr(spec)


# -- Against servers: TLS, an ACL user, Sentinel, the same from both halves -------------

def written_and_read(half: str, settings: Settings) -> list[int]:
    store = store_from_settings(half, settings)
    try:
        store.open("account", "a1").write(Opened(owner="ann"))
        return [event.event_number for event in store.read("account", "a1")]
    finally:
        close(store)


@pytest.mark.servers
def test_both_halves_reach_a_tls_redis_from_the_same_settings(half: str, redis_tls: str
                                                              ) -> None:
    settings = Settings(redis_url=redis_tls, prefix=f"tls-{uuid.uuid4().hex[:8]}")
    try:
        assert written_and_read(half, settings) == [1]
    finally:
        with client_from("sync", settings) as client:
            delete_prefix(client, settings.prefix)


@pytest.mark.servers
def test_both_halves_connect_as_the_acl_user_of_the_settings(half: str, redis_acl: AclUser
                                                             ) -> None:
    url = redis_acl.url.replace(f"{redis_acl.username}:{redis_acl.password}@", "")
    settings = Settings(redis_url=url, redis_username=redis_acl.username,
                        redis_password=redis_acl.password, prefix=redis_acl.prefix)
    assert written_and_read(half, settings) == [1]


@pytest.mark.servers
def test_both_halves_from_sentinel_settings_write_to_the_primary_the_sentinels_name(
    half: str, redis_sentinel: RedisSentinelServers
) -> None:
    settings = Settings(
        redis_sentinels=",".join(f"{h}:{p}" for h, p in redis_sentinel.sentinel_addresses),
        redis_sentinel_master=redis_sentinel.master_name,
        prefix=f"sentinel-{uuid.uuid4().hex[:8]}")
    assert written_and_read(half, settings) == [1]
    with redis_sentinel.primary().client() as client:
        on_primary = Store(RedisStorage(client, prefix=settings.prefix), events=ACCOUNT_EVENTS)
        assert [e.event_number for e in on_primary.read("account", "a1")] == [1]
        delete_prefix(client, settings.prefix)


def test_redis_cluster_true_on_one_redis_is_refused_by_both_halves_alike(half: str) -> None:
    """redis-py finds out as its client is built, redis.asyncio only at its first command:
    the spec asks the server first, for both."""
    from conftest import real_redis

    real_redis().close()  # fails under ES_REQUIRE_REDIS=1 if it is down
    url = REDIS_URL.rsplit("/", 1)[0] + "/0"  # INFO only: no key is read or written
    with pytest.raises(ConfigurationError, match="does not answer as a Redis Cluster \\(its "
                                                 "INFO says cluster_enabled:0\\); with one "
                                                 "Redis set ES_REDIS_CLUSTER=auto or false"):
        client_from(half, Settings(redis_url=url, redis_cluster="true"))


@pytest.mark.servers
def test_both_halves_build_a_cluster_client_with_the_same_options(
    redis_cluster: RedisClusterServers,
) -> None:
    settings = Settings(redis_url=f"{redis_cluster.urls[1]}?client_name=bank",
                        redis_connect_timeout_ms=250, redis_timeout_ms=1500)
    def off_is_0(kwargs: dict[str, Any]) -> dict[str, Any]:
        """The options that matter; no health check (redis-py's RedisCluster drops it)
        whether it says None or 0."""
        found = {name: kwargs.get(name) for name in ("client_name", "socket_connect_timeout",
                                                     "socket_timeout")}
        return {**found, "health_check_interval": kwargs.get("health_check_interval") or 0}

    async def async_options() -> dict[str, Any]:
        client = client_from("async", settings)
        assert isinstance(client, redis.asyncio.RedisCluster)
        try:
            await client.initialize()
            return off_is_0(client.get_default_node().connection_kwargs)
        finally:
            await client.aclose()

    sync_client = client_from("sync", settings)
    try:
        assert isinstance(sync_client, RedisCluster)
        pool = sync_client.get_default_node().redis_connection.connection_pool
        found_sync = off_is_0(pool.connection_kwargs)
    finally:
        sync_client.close()
    assert found_sync == {"client_name": "bank", "socket_connect_timeout": 0.25,
                          "socket_timeout": 1.5, "health_check_interval": 0}
    assert asyncio.run(async_options()) == found_sync


@pytest.mark.servers
def test_a_cluster_with_a_database_other_than_0_is_refused_by_both_halves(
    half: str, redis_cluster: RedisClusterServers
) -> None:
    settings = Settings(redis_url=redis_cluster.urls[0].rsplit("/", 1)[0] + "/2")
    with pytest.raises(ConfigurationError, match="a database other than 0 on a Redis Cluster"):
        client_from(half, settings)
