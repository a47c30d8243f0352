"""The test servers themselves work: each fixture in conftest_servers.py does what the library's
Cluster, Sentinel, TLS, ACL, durability and RabbitMQ tests will rely on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest
import redis
import servers as servers_module
from conftest import real_redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry
from servers import (
    AOF_OFFSET,
    CLAIMED_ENV,
    PORT_BASE_ENV,
    AclUser,
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    ServerError,
    TcpProxy,
    port_base,
    port_is_free,
    running,
)

pytestmark = pytest.mark.servers


def no_retry() -> Retry:
    """A redis-py client that reports a lost connection at once instead of retrying."""
    return Retry(NoBackoff(), 0)


# The helpers themselves


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    broken = RedisServer("broken", port_base() + AOF_OFFSET + 9, tmp_path, ["no-such-option 1"])
    with running(broken), pytest.raises(ServerError, match="no-such-option"):
        broken.start(timeout=5)


def test_a_server_a_dead_run_left_behind_is_killed_at_start(tmp_path: Path) -> None:
    port = port_base() + AOF_OFFSET + 9
    left_behind = RedisServer("left behind", port, tmp_path / "old-run")
    fresh = RedisServer("fresh", port, tmp_path / "new-run")
    with running(left_behind, fresh):
        left_behind.start()
        fresh.start()  # its pidfile names the server left behind: it is killed, not reused
        assert left_behind.process is not None and left_behind.process.poll() is not None
        with fresh.client() as client:
            assert client.config_get("dir")["dir"] == str(tmp_path / "new-run")



def _port_base_in_another_run(**env: str) -> subprocess.CompletedProcess[str]:
    """What port_base() says in a separate test run (a fresh process, not a child of this run)."""
    environment = {k: v for k, v in os.environ.items() if k not in (PORT_BASE_ENV, CLAIMED_ENV)}
    code = (
        "import servers\n"
        "try:\n    print(servers.port_base())\n"
        "except servers.ServerError as error:\n    print(error)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env={**environment, **env}, capture_output=True,
        text=True, cwd=Path(servers_module.__file__).parent, timeout=30, check=True,
    )


def test_a_second_test_run_gets_a_port_range_of_its_own() -> None:
    ours = port_base()
    other = _port_base_in_another_run()
    assert int(other.stdout) != ours  # it took the next free range instead of sharing ours


def test_a_second_test_run_asking_for_our_port_range_is_refused() -> None:
    ours = port_base()
    other = _port_base_in_another_run(**{PORT_BASE_ENV: str(ours)})
    assert f"{PORT_BASE_ENV}={ours}: that port range is held by another test run" in other.stdout
    assert f"pid {os.getpid()}" in other.stdout


# Redis Cluster


def test_cluster_spreads_keys_over_three_masters(redis_cluster: RedisClusterServers) -> None:
    name = uuid.uuid4().hex[:12]
    keys = [f"t-{name}:{index}" for index in range(30)]
    with redis_cluster.client() as client:
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
        owners = {redis_cluster.owner(key_slot(key.encode())).port for key in keys}
    assert owners == {node.port for node in redis_cluster.nodes}
    assert len(redis_cluster.urls) == 3

    async def read_and_delete() -> list[bytes | None]:
        async with redis_cluster.async_client() as client:
            values = [await client.get(key) for key in keys]
            for key in keys:
                await client.delete(key)
            return values

    assert asyncio.run(read_and_delete()) == [key.encode() for key in keys]


def test_a_key_stays_readable_while_its_slot_moves(redis_cluster: RedisClusterServers) -> None:
    tag = f"{{t-{uuid.uuid4().hex[:12]}}}"
    keys = [f"{tag}:{index}" for index in range(1000)]
    slot = key_slot(keys[0].encode())
    source = redis_cluster.owner(slot)
    target = next(node for node in redis_cluster.nodes if node is not source)
    reads: list[bytes | None] = []
    errors: list[Exception] = []
    reading, moved = threading.Event(), threading.Event()

    with redis_cluster.client() as writer:
        writer.mset(dict.fromkeys(keys, "value"))  # one slot: one command

    def read_until_moved() -> None:
        with redis_cluster.client() as reader:
            while not moved.is_set():
                try:
                    reads.append(reader.get(keys[len(reads) % len(keys)]))
                except redis.RedisError as error:
                    errors.append(error)
                    return
                reading.set()

    thread = threading.Thread(target=read_until_moved)
    thread.start()
    assert reading.wait(10)
    before = len(reads)
    redis_cluster.reshard(keys[0], to=target)
    during = len(reads) - before
    moved.set()
    thread.join(timeout=30)

    assert errors == []
    assert during > 0, "no read ran while the slot moved"
    assert set(reads) == {b"value"}
    assert redis_cluster.owner(slot) is target
    with redis_cluster.client() as client:
        assert client.mget(keys) == [b"value"] * len(keys)
        client.delete(*keys)


# Redis Sentinel


def read_through_failover(client: redis.Redis, key: str, timeout: float = 30.0) -> object:
    """GET through a master_for client, retrying while it finds the new primary."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get(key)
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sentinel_promotes_the_replica_when_the_primary_dies(
    redis_sentinel: RedisSentinelServers,
) -> None:
    key = f"t-{uuid.uuid4().hex[:12]}:balance"
    client = redis_sentinel.sentinel().master_for(redis_sentinel.master_name, retry=no_retry())
    client.set(key, "before")
    assert client.wait(1, 2000) == 1  # on the replica before the primary dies

    killed = redis_sentinel.kill_primary()
    promoted = redis_sentinel.wait_for_new_primary(30)

    assert promoted is not killed
    assert read_through_failover(client, key) == b"before"
    client.set(key, "after")
    with promoted.client() as direct:
        assert direct.get(key) == b"after"
        direct.delete(key)


def test_after_restore_a_primary_and_its_replica_can_fail_over_again(
    redis_sentinel: RedisSentinelServers,
) -> None:
    killed = redis_sentinel.kill_primary()
    redis_sentinel.wait_for_new_primary(30)
    redis_sentinel.restore()

    assert killed.running
    primary = redis_sentinel.primary()
    (replica,) = (node for node in redis_sentinel.data_nodes if node is not primary)
    with primary.client() as client:
        assert client.execute_command("ROLE")[0] == b"master"
    with replica.client() as client:
        assert client.execute_command("ROLE")[:3] == [b"slave", b"127.0.0.1", primary.port]
    redis_sentinel.kill_primary()
    assert redis_sentinel.wait_for_new_primary(30) is replica


# TLS


def test_tls_redis_serves_a_client_that_trusts_its_ca(redis_tls: str) -> None:
    key = f"t-{uuid.uuid4().hex[:12]}"
    with redis.Redis.from_url(redis_tls) as client:
        assert client.ping()
        client.set(key, "secret")
        assert client.get(key) == b"secret"
        assert client.connection_pool.connection_class is redis.SSLConnection
        client.delete(key)


def test_tls_redis_refuses_plain_text_and_untrusted_clients(redis_tls: str) -> None:
    plain_url = redis_tls.replace("rediss://", "redis://").split("?")[0]
    untrusted_url = redis_tls.split("?")[0]
    for url in (plain_url, untrusted_url):
        client = redis.Redis.from_url(url, socket_timeout=2, retry=no_retry())
        with client, pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            client.ping()


# ACL


def test_acl_user_reaches_only_its_prefix(redis_acl: AclUser) -> None:
    inside, outside = f"{redis_acl.prefix}:key", f"elsewhere-{uuid.uuid4().hex[:8]}:key"
    script = "return redis.call('SET', KEYS[1], ARGV[1])"
    with redis.Redis.from_url(redis_acl.url) as client:
        client.set(inside, "mine")
        assert client.get(inside) == b"mine"
        assert client.eval(script, 1, inside, "by script") == b"OK"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(outside, "theirs")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.eval(script, 1, outside, "by script")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.info()  # INFO and CONFIG are @dangerous


# AOF


def test_aof_redis_keeps_acknowledged_writes_through_kill_9(
    redis_aof: Callable[[], RedisServer],
) -> None:
    server = redis_aof()
    with server.client() as client:
        for _ in range(100):
            client.incr("counter")
        server.kill9()
        assert port_is_free(server.port)
        server.start()
        assert client.get("counter") == b"100"


# TCP proxy


def test_a_reply_lost_on_the_way_back_was_applied(
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    key = f"t-{uuid.uuid4().hex[:12]}:counter"
    direct = real_redis()
    kwargs = direct.connection_pool.connection_kwargs
    proxy = tcp_proxy((kwargs["host"], kwargs["port"]))
    try:
        with redis.Redis(host=proxy.address[0], port=proxy.port, db=kwargs.get("db", 0),
                         retry=no_retry()) as client:
            assert client.ping()
            proxy.drop_next_reply(containing=b"INCR")
            with pytest.raises(redis.ConnectionError):
                client.incr(key)
            assert direct.get(key) == b"1"
            assert client.incr(key) == 2
    finally:
        direct.delete(key)
        direct.close()


def test_proxy_down_refuses_connections_until_it_is_up(
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    direct = real_redis()
    kwargs = direct.connection_pool.connection_kwargs
    direct.close()
    proxy = tcp_proxy((kwargs["host"], kwargs["port"]))
    with redis.Redis(
        host=proxy.address[0], port=proxy.port, retry=no_retry(), socket_connect_timeout=1
    ) as client:
        assert client.ping()
        proxy.down()
        with pytest.raises(redis.ConnectionError):
            client.ping()  # the open connection was closed
        with pytest.raises(redis.ConnectionError, match="refused"):
            client.ping()  # and a new one is refused
        proxy.up()
        assert client.ping()


def test_a_hung_server_times_a_client_out_until_it_resumes(
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    direct = real_redis()
    kwargs = direct.connection_pool.connection_kwargs
    direct.close()
    proxy = tcp_proxy((kwargs["host"], kwargs["port"]))
    with redis.Redis(
        host=proxy.address[0], port=proxy.port, retry=no_retry(), socket_timeout=0.3
    ) as client:
        assert client.ping()
        proxy.hang()
        began = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - began < 2
        proxy.resume()
        assert client.ping()


# RabbitMQ


def test_dramatiq_delivers_a_message_through_a_rabbitmq_vhost(rabbitmq_vhost: str) -> None:
    broker = RabbitmqBroker(url=rabbitmq_vhost)
    received: list[str] = []
    arrived = threading.Event()

    def record(text: str) -> None:
        received.append(text)
        arrived.set()

    actor = dramatiq.actor(broker=broker, actor_name="record", queue_name="servers-check")(record)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        actor.send("hello")
        assert arrived.wait(30), "the worker did not receive the message within 30 s"
    finally:
        worker.stop()
        broker.close()
    assert received == ["hello"]
