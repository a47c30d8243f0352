"""When Redis fails (guarantee 9), in one process: clear errors within a bounded time (Redis
down or hung), the exactly-once retry of a write whose reply was lost, replica-confirmed
writes, a Sentinel failover, a full memory, and the start-up checks. Each test of a store
runs on both halves, Store and AsyncStore (`half`, see halves.py): the same errors and
guarantees. The same with real publisher and worker processes is in
tests/test_failures_processes.py."""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import dramatiq
import pytest
import redis
import redis.asyncio
import servers
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened, delete_prefix, real_redis
from dramatiq.brokers.stub import StubBroker
from halves import client_from, client_of, close, followed, store_from_settings, store_on
from servers import RedisSentinelServers, RedisServer, TcpProxy

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    ConfigurationError,
    Content,
    DramatiqEventBus,
    DurabilityError,
    EsError,
    MasterKeys,
    Personal,
    RedisStorage,
    StorageFullError,
    StorageUnavailableError,
    Store,
)
from es_workers.encryption import new_master_key
from es_workers.redis.durability import Durability
from es_workers.redis.entries import DEFAULT_PARTITIONS
from es_workers.redis.keys import RedisKeys
from es_workers.settings import Settings
from es_workers.wiring import client_from_url
from es_workers.workers.broker import WakingRedisBroker

ROOT = Path(__file__).resolve().parent.parent
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")

pytestmark = pytest.mark.servers


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"fail-{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(real_redis(), name)


@pytest.fixture
def proxy(tcp_proxy: Callable[[tuple[str, int]], TcpProxy]) -> TcpProxy:
    """A TcpProxy in front of the shared test Redis."""
    options = real_redis().connection_pool.connection_kwargs
    return tcp_proxy((options["host"], options["port"]))


def through(proxy: TcpProxy) -> str:
    """The URL of the test Redis's database through the proxy."""
    db = real_redis().connection_pool.connection_kwargs.get("db", 0)
    return f"redis://127.0.0.1:{proxy.port}/{db}"


def stored_ids(prefix: str, entity_id: str) -> list[str]:
    store = Store(RedisStorage(real_redis(), prefix=prefix), events=ACCOUNT_EVENTS)
    return [event.store_event_id for event in store.read("account", entity_id)]


def outbox_entries(storage: RedisStorage | str) -> int:
    """Entries in the outboxes of a storage, or of a prefix on the test Redis."""
    if isinstance(storage, str):
        storage = RedisStorage(real_redis(), prefix=storage)
    return sum(storage.client.xlen(storage.keys.outbox(p)) for p in range(storage.partitions))


# A clear error, fast


def test_store_calls_with_redis_down_raise_storage_unavailable_fast_naming_it(
    half: str, proxy: TcpProxy, prefix: str
) -> None:
    url = through(proxy)
    settings = Settings(redis_url=url, redis_connect_timeout_ms=500)
    bus = DramatiqEventBus(StubBroker())
    bus.subscribe("account", "balances", lambda event: None)
    store = store_on(half, client_from(half, settings), prefix=prefix, bus=bus)
    store.open("account", "a1").write(Opened(owner="a"))
    proxy.down()
    calls: dict[str, Callable[[], object]] = {
        "write": lambda: store.open("account", "a2").write(Opened(owner="b")),
        "read": lambda: list(store.read("account", "a1")),
        "entity_ids": lambda: store.entity_ids("account"),
        "wait_for": lambda: store.wait_for("account", "a1", 1, timeout=1),
        "read_all": lambda: list(store.read_all()),
        "follow": lambda: followed(store, "f"),
    }
    server = url.removeprefix("redis://")
    for name, call in calls.items():
        began = time.monotonic()
        with pytest.raises(StorageUnavailableError) as raised:
            call()
        took = time.monotonic() - began
        assert took < 5, f"{name} took {took:.1f} s to fail"
        assert f"Redis {server} is unavailable" in str(raised.value)
        assert raised.value.server == server
        assert isinstance(raised.value.cause, redis.ConnectionError)
        assert raised.value.outcome_unknown is (name == "write"), name


class Registered(Content):
    name: Annotated[str, Personal]


def test_personal_data_with_redis_down_raises_storage_unavailable(
    half: str, proxy: TcpProxy, prefix: str
) -> None:
    """The data keys of personal fields are in Redis too: reaching them fails alike."""
    settings = Settings(redis_url=through(proxy), redis_connect_timeout_ms=500)
    store = store_on(half, client_from(half, settings), prefix=prefix,
                     events={"user": [Registered]}, encryption=MasterKeys(new_master_key()))
    store.open("user", "u1").write(Registered(name="Ada"))
    proxy.down()
    try:
        with pytest.raises(StorageUnavailableError) as raised:
            store.open("user", "u2").write(Registered(name="Grace"))  # a new data key
        assert "making a data key" in str(raised.value) or "reading a data key" in str(
            raised.value)
    finally:
        proxy.up()
    close(store)


def test_a_hung_redis_fails_a_write_within_the_timeout_and_the_same_write_lands_once_after(
    half: str, proxy: TcpProxy, prefix: str
) -> None:
    """Redis stops answering (connections stay open): each call fails within a bounded time
    (the settings' command timeout, retried), the write with its outcome unknown."""
    url = through(proxy)
    settings = Settings(redis_url=url, redis_timeout_ms=300, publisher_block_ms=100,
                        wait_timeout_ms=100)
    store = store_on(half, client_from(half, settings), prefix=prefix)
    stream = store.open("account", "a1")
    stream.write(Opened(owner="a"))
    proxy.hang()
    for name, call in {"write": lambda: stream.write(Deposited(amount=1)),
                       "read": lambda: list(store.read("account", "a1")),
                       "read_all": lambda: list(store.read_all())}.items():
        began = time.monotonic()
        with pytest.raises(StorageUnavailableError) as raised:
            call()
        took = time.monotonic() - began
        assert took < 5, f"{name} took {took:.1f} s to fail"
        assert isinstance(raised.value.cause, redis.TimeoutError), name
        assert raised.value.outcome_unknown is (name == "write"), name
    proxy.resume()
    stream.write(Deposited(amount=1))  # the same contents again
    assert stream.position == 2 and len(stored_ids(prefix, "a1")) == 2
    close(store)


def test_opening_a_store_on_an_unreachable_redis_raises_storage_unavailable_without_password(
    half: str,
) -> None:
    url = "redis://app:s3cret-pw@127.0.0.1:1/0"
    with pytest.raises(StorageUnavailableError) as raised:
        store_on(half, client_from(half, Settings(redis_url=url)), prefix="x")
    assert "Redis app@127.0.0.1:1/0 is unavailable while opening the store" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value) + repr(raised.value.cause)


def test_a_database_number_past_the_servers_is_a_configuration_error_naming_it() -> None:
    real_redis()
    url = REDIS_URL.rsplit("/", 1)[0] + "/999"
    with pytest.raises(ConfigurationError, match=r"Redis \S+/999 has no such database "
                       r"\(DB index is out of range\): check the database number in ES_REDIS_URL"):
        RedisStorage(redis.Redis.from_url(url))


def test_an_http_server_on_the_redis_port_is_a_configuration_error_naming_it() -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                         http.server.BaseHTTPRequestHandler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        try:
            with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{web.server_port}/0 "
                               "did not answer as a Redis server .*check the host and port"):
                RedisStorage(redis.Redis.from_url(f"redis://127.0.0.1:{web.server_port}/0"))
        finally:
            web.shutdown()


def test_status_with_redis_down_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    env = dict(os.environ, ES_REDIS_URL="redis://app:s3cret-pw@127.0.0.1:1/0",
               ES_PREFIX="x", ES_REDIS_CONNECT_TIMEOUT_MS="200", PYTHONPATH=str(ROOT))
    done = subprocess.run([ES_WORKERS, "status", "tests.failure_app:store"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "StorageUnavailable" in lines[0] or "unavailable" in lines[0]
    assert "127.0.0.1:1/0" in lines[0] and "s3cret-pw" not in done.stderr + done.stdout


# Exactly-once retry of a write whose outcome is unknown


def test_a_write_whose_reply_was_lost_is_applied_once_when_written_again_on_the_same_stream(
    half: str, proxy: TcpProxy, prefix: str
) -> None:
    store = store_on(half, client_of(half, through(proxy)), prefix=prefix)
    stream = store.open("account", "a1")
    proxy.drop_next_reply(containing=b"EVALSHA")
    with pytest.raises(StorageUnavailableError) as raised:
        stream.write(Opened(owner="a"), Deposited(amount=1))
    assert raised.value.outcome_unknown
    assert proxy.reply_dropped
    assert len(stored_ids(prefix, "a1")) == 2  # it did reach Redis

    stream.write(Opened(owner="a"), Deposited(amount=1))  # the same contents again

    assert stream.position == 2
    assert len(stored_ids(prefix, "a1")) == 2
    assert outbox_entries(prefix) == 1
    stream.write(Deposited(amount=2))  # and the stream goes on
    assert stream.position == 3
    close(store)


def test_a_write_that_never_reached_redis_is_applied_once_when_written_again(
    half: str, proxy: TcpProxy, prefix: str
) -> None:
    store = store_on(half, client_of(half, through(proxy)), prefix=prefix)
    stream = store.open("account", "a1")
    proxy.down()
    with pytest.raises(StorageUnavailableError):
        stream.write(Opened(owner="a"))
    proxy.up()
    stream.write(Opened(owner="a"))
    assert stream.position == 1 and len(stored_ids(prefix, "a1")) == 1
    close(store)


def test_redis_py_retrying_through_the_wiring_hides_a_lost_reply_without_duplicating(
    half: str, proxy: TcpProxy, prefix: str
) -> None:
    url = through(proxy)
    store = store_on(half, client_from(half, Settings(redis_url=url)), prefix=prefix)
    stream = store.open("account", "a1")
    proxy.drop_next_reply(containing=b"EVALSHA")
    stream.write(Opened(owner="a"), Deposited(amount=1))
    assert proxy.reply_dropped
    assert stream.position == 2 and len(stored_ids(prefix, "a1")) == 2
    assert outbox_entries(prefix) == 1
    close(store)


def test_other_contents_after_an_unknown_outcome_are_new_events(
    half: str, proxy: TcpProxy, prefix: str
) -> None:
    store = store_on(half, client_of(half, through(proxy)), prefix=prefix)
    stream = store.open("account", "a1")
    proxy.drop_next_reply(containing=b"EVALSHA")
    with pytest.raises(StorageUnavailableError):
        stream.write(Opened(owner="a"))
    # Not a retry: the first write did land, so this one conflicts rather than duplicates.
    with pytest.raises(EsError, match="expected position 0, but the stream is at 1"):
        stream.write(Opened(owner="someone else"))
    close(store)


# Redis memory full


def test_a_write_with_redis_memory_full_raises_storage_full_and_stores_nothing(
    half: str, redis_aof: Callable[[], RedisServer],
) -> None:
    server = redis_aof()
    client = server.client()
    store = store_on(half, client_of(half, server.url), prefix="full")
    waiting = store_on(half, client_of(half, server.url), prefix="full",
                       durability=Durability(replicas=1, timeout_ms=10))
    stream = store.open("account", "a1")
    stream.write(Opened(owner="a"))
    storage = RedisStorage(client, prefix="full")  # to look at what is stored
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 512 * 1024)
    filler = 0
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        while True:  # fill memory under the app's prefix
            client.set(f"full:filler:{filler}", "x" * 4096)
            filler += 1
    # Well over the limit, so that no buffer freed meanwhile lets a write through.
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 100 * 1024)
    before = (client.xlen(storage.keys.append_keys("account", "a1")[0]),
              outbox_entries(storage))

    with pytest.raises(StorageFullError, match="out of memory") as raised:
        stream.write(Deposited(amount=1), Deposited(amount=2))
    assert isinstance(raised.value, StorageUnavailableError)
    assert not raised.value.outcome_unknown
    with pytest.raises(StorageFullError):
        store.open("account", "a2").write(Opened(owner="b"))
    with pytest.raises(StorageFullError):  # refused before the replicas are waited for
        waiting.open("account", "a2").write(Opened(owner="b"))
    after = (client.xlen(storage.keys.append_keys("account", "a1")[0]),
             outbox_entries(storage))
    assert after == before
    assert storage.position("account", "a2") == 0

    client.delete(*(f"full:filler:{n}" for n in range(filler)))
    stream.write(Deposited(amount=1), Deposited(amount=2))
    assert stream.position == 3
    close(store)
    close(waiting)


def test_status_show_parked_list_and_health_work_with_redis_memory_full(
    redis_full_server: RedisServer,
) -> None:
    # When Redis is full is when an operator needs them; they must not need to write.
    prefix = f"full-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_full_server.url, prefix=prefix)
    store = Store.from_settings(events=ACCOUNT_EVENTS, settings=settings)
    store.subscribe("account", "audit", lambda event: None)
    store.open("account", "a1").write(Opened(owner="ann"))
    storage: RedisStorage = store.storage  # type: ignore[assignment]
    storage.heartbeats.beat("worker")  # a worker of this host, as `health` wants
    env = dict(os.environ, ES_REDIS_URL=redis_full_server.url, ES_PREFIX=prefix,
               PYTHONPATH=str(ROOT / "tests"))
    commands = [["status", "--json"], ["show", "account", "a1"],
                ["parked", "list", "audit", "account"], ["health"]]
    client = redis_full_server.client()
    with servers.memory_full(client, prefix):
        with pytest.raises(StorageFullError):
            store.open("account", "a2").write(Opened(owner="bob"))
        for command in commands:
            at = 2 if command[0] == "parked" else 1
            done = subprocess.run(
                [ES_WORKERS, *command[:at], "settings_app:store", *command[at:]], cwd=ROOT,
                env=env, capture_output=True, text=True, timeout=60,
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            assert "out of memory" not in done.stderr.lower(), (command, done.stderr)
        assert asyncio.run(read_async(redis_full_server.url, prefix, "a1")) == [1]
    delete_prefix(client, prefix)
    store.close()


async def read_async(url: str, prefix: str, entity_id: str) -> list[int]:
    """The entity's event numbers, read by an AsyncStore opened on the prefix."""
    storage = AsyncRedisStorage(redis.asyncio.Redis.from_url(url), prefix=prefix)
    async with AsyncStore(storage, events=ACCOUNT_EVENTS) as store:
        return [event.event_number async for event in store.read("account", entity_id)]


def test_an_evicting_maxmemory_policy_is_refused_at_start_up(
    half: str, redis_aof: Callable[[], RedisServer],
) -> None:
    server = redis_aof()
    with server.client() as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(ConfigurationError, match="maxmemory-policy 'allkeys-lru'"):
        store_on(half, client_of(half, server.url), prefix="evicting")


# Replica-confirmed writes


def test_a_write_not_confirmed_by_the_replicas_asked_for_raises_durability_error(
    half: str, prefix: str,
) -> None:
    # The shared test Redis has no replica: WAIT 1 times out with 0 acknowledgements.
    store = store_on(half, client_of(half, REDIS_URL), prefix=prefix,
                     durability=Durability(replicas=1, timeout_ms=50))
    stream = store.open("account", "a1")
    with pytest.raises(DurabilityError, match="stored on the primary but confirmed on 0 of"
                       " the 1 replicas") as raised:
        stream.write(Opened(owner="a"), Deposited(amount=1))
    assert (raised.value.first, raised.value.last) == (1, 2)
    assert len(stored_ids(prefix, "a1")) == 2  # stored on the primary, as it says
    with pytest.raises(DurabilityError):  # the same write again: waited for again, not stored
        stream.write(Opened(owner="a"), Deposited(amount=1))
    assert len(stored_ids(prefix, "a1")) == 2 and outbox_entries(prefix) == 1
    close(store)


def test_a_write_waiting_for_replicas_gives_a_server_that_forgot_the_script_it_again(
    half: str, redis_aof: Callable[[], RedisServer],
) -> None:
    server = redis_aof()  # no replica: WAIT 1 answers 0
    store = store_on(half, client_of(half, server.url), prefix="reload",
                     durability=Durability(replicas=1, timeout_ms=10))
    with server.client() as client:
        client.script_flush()
        with pytest.raises(DurabilityError) as raised:
            store.open("account", "a1").write(Opened(owner="a"))
        assert raised.value.confirmed == 0
        assert RedisStorage(client, prefix="reload").position("account", "a1") == 1
    close(store)


def sentinel_settings(sentinels: RedisSentinelServers, **options: Any) -> Settings:
    return Settings(
        redis_sentinels=",".join(f"{h}:{p}" for h, p in sentinels.sentinel_addresses),
        redis_sentinel_master=sentinels.master_name, prefix=f"wait-{uuid.uuid4().hex[:8]}",
        **options,
    )


def test_a_write_waits_for_a_replica_and_is_on_it_when_write_returns(
    half: str, redis_sentinel: RedisSentinelServers,
) -> None:
    settings = sentinel_settings(redis_sentinel, wait_replicas=1, wait_timeout_ms=2000)
    store = store_from_settings(half, settings)
    stream = store.open("account", f"a-{uuid.uuid4().hex[:8]}")
    for amount in range(20):
        stream.write(Deposited(amount=amount) if amount else Opened(owner="a"))
    replica = next(node for node in redis_sentinel.data_nodes
                   if node is not redis_sentinel.primary())
    key = RedisKeys(settings.prefix, DEFAULT_PARTITIONS).stream("account", stream.entity_id)
    with replica.client() as client:
        assert client.xlen(key) == 20
    close(store)
    with redis_sentinel.primary().client() as client:
        delete_prefix(client, settings.prefix)


def test_a_store_from_sentinel_settings_writes_to_the_primary_and_follows_a_failover(
    half: str, redis_sentinel: RedisSentinelServers,
) -> None:
    """Write (confirmed by the replica), kill the primary, wait for the Sentinels to promote
    the replica, write again on the same stream: every event is on the new primary."""
    settings = sentinel_settings(redis_sentinel, wait_replicas=1, wait_timeout_ms=2000,
                                 redis_connect_timeout_ms=500, redis_timeout_ms=2500)
    store = store_from_settings(half, settings)
    stream = store.open("account", "a1")
    stream.write(Opened(owner="a"))
    with redis_sentinel.primary().client() as client:
        on_primary = Store(RedisStorage(client, prefix=settings.prefix), events=ACCOUNT_EVENTS)
        assert [e.event_number for e in on_primary.read("account", "a1")] == [1], (
            "the event is not on the primary the Sentinels name")

    redis_sentinel.kill_primary()
    promoted = redis_sentinel.wait_for_new_primary()
    redis_sentinel.restore()  # the old primary back as a replica: WAIT 1 can succeed
    stream.write(Deposited(amount=1))

    assert [e.event_number for e in store.read("account", "a1")] == [1, 2]
    close(store)
    with promoted.client() as client:
        on_primary = Store(RedisStorage(client, prefix=settings.prefix), events=ACCOUNT_EVENTS)
        assert [e.content for e in on_primary.read("account", "a1")] == [
            Opened(owner="a"), Deposited(amount=1)]
    # On a loaded machine the Sentinels may fail over again meanwhile: clean up on whichever
    # server is the primary now.
    with redis_sentinel.primary().client() as client:
        delete_prefix(client, settings.prefix)


def test_wait_aof_on_a_redis_older_than_7_2_is_refused_at_start_up_naming_its_version(
    half: str, prefix: str,
) -> None:
    version = real_redis().execute_command("HELLO")[b"version"].decode()
    if tuple(map(int, version.split(".")[:2])) >= (7, 2):
        pytest.fail(f"this test needs a Redis older than 7.2 (here {version})")
    with pytest.raises(ConfigurationError, match=rf"version {version}\).*Redis 7\.2"):
        store_on(half, client_of(half, REDIS_URL), prefix=prefix,
                 durability=Durability(aof=True))


def test_config_output_never_shows_a_password() -> None:
    env = dict(os.environ, ES_REDIS_URL="redis://app:s3cret-pw@127.0.0.1:6379/0",
               ES_REDIS_PASSWORD="s3cret-pw", PYTHONPATH=str(ROOT))  # must agree
    done = subprocess.run([ES_WORKERS, "config"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "***" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


# Workers ride out an outage quietly


def test_a_consumer_with_its_prefetch_full_never_says_redis_recovered_while_it_is_down(
    proxy: TcpProxy, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its messages are being handled, so it fetches nothing: its empty return says
    nothing about Redis."""
    settings = Settings(redis_url=proxy.url, redis_connect_timeout_ms=200)
    broker = WakingRedisBroker(client=client_from_url(proxy.url, settings),
                               namespace=f"{prefix}:dramatiq", idle_timeout_ms=50)
    broker.declare_queue("busy")
    broker.enqueue(dramatiq.Message(queue_name="busy", actor_name="a", args=(), kwargs={},
                                    options={}))
    busy, idle = (broker.consume(queue, prefetch=1, timeout=10) for queue in ("busy", "idle"))
    try:
        deadline = time.monotonic() + 10
        while (held := next(busy)) is None:  # being handled: the prefetch of 1 is full
            assert time.monotonic() < deadline, "the message never came"
        proxy.down()
        with caplog.at_level(logging.INFO, logger="es_workers.workers.broker"):
            assert next(idle) is None  # the outage begins
            began = time.monotonic()
            while time.monotonic() - began < 1.0:
                assert next(busy) is None
            assert "Redis broker unavailable" in caplog.text
            assert "recovered" not in caplog.text
            proxy.up()
            deadline = time.monotonic() + 10
            while "recovered after" not in caplog.text:
                assert time.monotonic() < deadline, "the consumers never recovered"
                next(idle)
    finally:
        if "recovered after" not in caplog.text:  # failed with the proxy down
            proxy.up()
        busy.ack(held)
        busy.close()
        idle.close()
        broker.close()


def test_broker_consumers_wait_out_an_outage_with_one_warning_per_backoff_step(
    proxy: TcpProxy, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=proxy.url, redis_connect_timeout_ms=200)
    broker = WakingRedisBroker(client=client_from_url(proxy.url, settings),
                               namespace=f"{prefix}:dramatiq")
    consumers = [broker.consume(queue, prefetch=1, timeout=10) for queue in ("a", "b", "a.DQ")]
    try:
        proxy.down()
        with caplog.at_level(logging.INFO, logger="es_workers.workers.broker"):
            began = time.monotonic()
            while time.monotonic() - began < 2.5:
                for consumer in consumers:
                    assert next(consumer) is None  # no exception: the worker thread goes on
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            # Steps of 0.1, 0.2, 0.4, 0.8, 1.6 s (+-20%) for all three consumers together.
            assert 3 <= len(warnings) <= 6, [r.getMessage() for r in warnings]
            assert all("Redis broker unavailable" in r.getMessage() for r in warnings)
            proxy.up()
            deadline = time.monotonic() + 10
            while not any("recovered after" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the consumers never recovered"
                for consumer in consumers:
                    next(consumer)
    finally:
        for consumer in consumers:
            consumer.close()
        broker.close()
