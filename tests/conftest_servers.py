"""Fixtures for servers a test run starts itself: Redis Cluster, Sentinel, TLS, ACL, AOF, a TCP
proxy, and RabbitMQ vhosts (the helpers live in tests/servers.py).

Each server starts once per session on its own ports (ES_TEST_PORT_BASE, default 7100, plus
the offsets in servers.py) and temp dir, the first time a test asks for it. A server that cannot
start fails the test with its log when ES_REQUIRE_REDIS=1 (CI), and skips it otherwise.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import servers
from servers import (
    AclUser,
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    ServerError,
    TcpProxy,
)

REQUIRE_SERVERS = os.environ.get("ES_REQUIRE_REDIS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers: starts Redis or RabbitMQ servers of its own")


@contextlib.contextmanager
def starting(what: str) -> Iterator[None]:
    """Turns a server that cannot start into a failure (ES_REQUIRE_REDIS=1) or a skip."""
    try:
        yield
    except (ServerError, OSError, redis.RedisError) as error:
        message = f"could not start {what}: {error}"
    else:
        return
    if REQUIRE_SERVERS:
        pytest.fail(message, pytrace=False)
    pytest.skip(f"{message}\n(set ES_REQUIRE_REDIS=1 to fail instead)")


def _ports(offset: int, count: int) -> list[int]:
    return [servers.port_base() + offset + index for index in range(count)]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """Three Redis Cluster masters; `.client()` makes a RedisCluster, `.reshard()` moves a slot."""
    cluster = RedisClusterServers(
        tmp_path_factory.mktemp("redis-cluster"), _ports(servers.CLUSTER_OFFSET, 3)
    )
    with servers.running(*cluster.nodes):
        with starting("a Redis Cluster"):
            cluster.start()
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisSentinelServers]:
    sentinels = RedisSentinelServers(
        tmp_path_factory.mktemp("redis-sentinel"),
        _ports(servers.SENTINEL_DATA_OFFSET, 2),
        _ports(servers.SENTINEL_OFFSET, 3),
    )
    with servers.running(*sentinels.sentinels, *sentinels.data_nodes):
        with starting("Redis with Sentinel"):
            sentinels.start()
        yield sentinels


@pytest.fixture
def redis_sentinel(redis_sentinel_servers: RedisSentinelServers) -> Iterator[RedisSentinelServers]:
    """A primary, a replica and three Sentinels, healthy when the test starts: nodes a test
    killed are restarted as replicas after it."""
    yield redis_sentinel_servers
    redis_sentinel_servers.restore()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The rediss:// URL (CA file included) of a redis-server that speaks TLS only."""
    with starting("a TLS Redis"):
        server = servers.tls_server(
            tmp_path_factory.mktemp("redis-tls"), servers.port_base() + servers.TLS_OFFSET
        )
    with servers.running(server):
        with starting("a TLS Redis"):
            server.start()
        yield servers.tls_url(server)


@pytest.fixture(scope="session")
def redis_acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(
        "ACL redis",
        servers.port_base() + servers.ACL_OFFSET,
        tmp_path_factory.mktemp("redis-acl"),
    )
    with servers.running(server):
        with starting("a Redis for ACL users"):
            server.start()
        yield server


@pytest.fixture
def redis_acl(redis_acl_server: RedisServer) -> Iterator[AclUser]:
    """A user of its own confined to a prefix of its own (`~prefix:*`, `&prefix:*`, no @admin
    or @dangerous); the user and its keys are deleted afterwards."""
    user = servers.add_acl_user(
        redis_acl_server, f"acl-{uuid.uuid4().hex[:12]}", f"u-{uuid.uuid4().hex[:8]}"
    )
    yield user
    with redis_acl_server.client() as admin:
        admin.acl_deluser(user.username)
        for key in list(admin.scan_iter(f"{user.prefix}:*", count=1000)):
            admin.delete(key)


@pytest.fixture(scope="session")
def redis_full_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the run's own whose memory a test may fill
    (`servers.memory_full`): a full shared Redis would fail every other test."""
    server = RedisServer(
        "Redis to fill", servers.port_base() + servers.FULL_OFFSET,
        tmp_path_factory.mktemp("redis-full"),
    )
    with servers.running(server):
        with starting("a Redis to fill"):
            server.start()
        yield server


@pytest.fixture(scope="session")
def redis_password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server whose default user needs a password (`requirepass`): its
    `client_options["password"]`; its `url` has none."""
    password = uuid.uuid4().hex
    server = RedisServer(
        "Redis with a password", servers.port_base() + servers.PASSWORD_OFFSET,
        tmp_path_factory.mktemp("redis-password"), [f"requirepass {password}"],
        client_options={"password": password},
    )
    with servers.running(server):
        with starting("a Redis with a password"):
            server.start()
        yield server


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Makes started redis-servers with `appendfsync always`, each with its own port and dir;
    they have `kill9()`, `start()` and `wait_ready()`. Stopped after the test."""
    made: list[RedisServer] = []

    def make() -> RedisServer:
        port = servers.port_base() + servers.AOF_OFFSET + len(made)
        server = servers.aof_server(tmp_path / f"aof-{port}", port)
        made.append(server)
        with starting("a Redis with AOF"):
            server.start()
        return server

    try:
        yield make
    finally:
        for server in made:
            server.stop()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[tuple[str, int]], TcpProxy]]:
    """Makes started TcpProxy objects in front of an address; closed after the test."""
    made: list[TcpProxy] = []

    def make(target: tuple[str, int]) -> TcpProxy:
        proxy = TcpProxy(target).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """The amqp:// URL of a RabbitMQ vhost of this test's own, deleted afterwards."""
    with contextlib.ExitStack() as stack:
        with starting("a RabbitMQ vhost"):
            if not servers.rabbitmq_reachable():
                raise ServerError(
                    f"no RabbitMQ at {servers.RABBITMQ_HOST}:{servers.RABBITMQ_PORT}; "
                    "start it with `rabbitmq-server -detached` (.ci/run does)"
                )
            url = stack.enter_context(servers.rabbitmq_vhost())
        yield url
