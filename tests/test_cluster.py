"""Redis Cluster: what only a cluster shows. (The storage, delivery and admin suites run on it
as the `cluster` backend too.)

- entities spread over every master, each append on its partition's slot;
- the wiring finds the cluster from any node's URL and wants a broker beside it;
- a prefix whose partitions leave masters unused is reported;
- an idle cluster publisher is woken by an append, not by its poll;
- moving partitions between masters while writers, the publisher and workers run loses
  nothing and raises nothing, whichever half writes; a write to a slot stuck mid-move
  waits (both halves).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from apps.delivery_kit import FAST_PUBLISHER, Delivery, Recorder, assert_exactly_once_in_order
from conftest import ACCOUNT_EVENTS, Deposited, Opened, delete_prefix
from halves import close, store_on
from kit import wait_for, write_count
from redis.cluster import RedisCluster
from servers import RedisClusterServers

from es_workers import AsyncRedisStorage, AsyncStore, RedisStorage, Store, admin
from es_workers.errors import ConfigurationError, DurabilityError
from es_workers.redis.durability import Durability
from es_workers.redis.publisher import GROUP, Publisher, PublisherOptions
from es_workers.settings import Settings, load_settings
from es_workers.wiring import build_parts, redis_client

pytestmark = pytest.mark.servers


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> Iterator[RedisCluster]:
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture
def prefix(cluster: RedisCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    delete_prefix(cluster, name)  # type: ignore[arg-type]


def keys_on(node_client: object, pattern: str) -> list[bytes]:
    return list(node_client.scan_iter(pattern, count=1000))  # type: ignore[attr-defined]


def test_entities_land_on_every_master(
    redis_cluster: RedisClusterServers, cluster: RedisCluster, prefix: str
) -> None:
    store = Store(RedisStorage(cluster, prefix=prefix), events=ACCOUNT_EVENTS)
    heads = {f"acc-{i}": write_count(store, f"acc-{i}", 3) for i in range(60)}

    for node in redis_cluster.nodes:
        with node.client() as client:
            assert keys_on(client, f"{prefix}:*:stream:account:*"), f"no entity on {node.name}"
            assert keys_on(client, f"{prefix}:*:outbox"), f"no outbox on {node.name}"
    assert {e: store.storage.position("account", e) for e in heads} == heads  # type: ignore[attr-defined]
    ids, token = store.storage.entity_ids("account", limit=100)
    assert sorted(ids) == sorted(heads) and token is None


# -- Wiring ---------------------------------------------------------------------------------


def test_the_url_of_any_node_is_enough_to_find_the_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    for url in redis_cluster.urls:
        client = redis_client(Settings(redis_url=url))
        assert isinstance(client, RedisCluster)
        client.close()
    forced = redis_client(Settings(redis_url=redis_cluster.urls[0], redis_cluster="false"))
    assert not isinstance(forced, RedisCluster)
    forced.close()


def test_redis_cluster_true_on_one_redis_is_a_configuration_error() -> None:
    from conftest import REDIS_URL, real_redis

    real_redis().close()  # fails under ES_REQUIRE_REDIS=1 if it is down
    with pytest.raises(ConfigurationError, match="ES_REDIS_CLUSTER=auto or false"):
        redis_client(Settings(redis_url=REDIS_URL, redis_cluster="true"))


def test_a_cluster_without_a_broker_url_is_a_configuration_error_saying_so(
    redis_cluster: RedisClusterServers, cluster: RedisCluster, prefix: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"ES_BROKER_URL.*RabbitMQ"):
        build_parts(Settings(redis_url=redis_cluster.urls[1], prefix=prefix))
    on_cluster = redis_cluster.urls[2]
    with pytest.raises(ConfigurationError, match="is a Redis Cluster node"):
        build_parts(Settings(redis_url=redis_cluster.urls[1], broker_url=on_cluster,
                             prefix=prefix))
    assert keys_on(cluster, f"{prefix}:*") == []  # refused before anything was written


def test_a_cluster_with_rabbitmq_builds_a_store(
    redis_cluster: RedisClusterServers, prefix: str
) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    settings = Settings(redis_url=redis_cluster.urls[0], prefix=prefix,
                        broker_url="amqp://guest:guest@127.0.0.1:5672/")
    storage, bus = build_parts(settings)
    assert isinstance(storage.client, RedisCluster)
    assert isinstance(bus.broker, RabbitmqBroker)
    storage.close()


# -- Partitions and masters -----------------------------------------------------------------


def test_a_prefix_with_fewer_partitions_than_masters_is_reported(
    cluster: RedisCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(RedisStorage(cluster, prefix=prefix, partitions=2), events=ACCOUNT_EVENTS)
    (warning,) = admin.status(store).warnings
    assert "2 partitions" in warning and "of the cluster's 3 masters" in warning

    with caplog.at_level(logging.WARNING, logger="es_workers.publisher"):
        thread = threading.Thread(target=store.start, daemon=True)
        thread.start()
        try:
            wait_for(lambda: "of the cluster's 3 masters" in caplog.text,
                     "the publisher's warning")
        finally:
            store.close()
            thread.join(timeout=10)

    wide = Store(RedisStorage(cluster, prefix=f"{prefix}-w", partitions=16))
    assert admin.status(wide).warnings == []
    delete_prefix(cluster, f"{prefix}-w")  # type: ignore[arg-type]


# -- Publisher ------------------------------------------------------------------------------


def test_an_idle_cluster_publisher_is_woken_by_an_append_even_after_its_partition_moved(
    redis_cluster: RedisClusterServers, cluster: RedisCluster, prefix: str
) -> None:
    """Its poll is 10 s here: each event relayed within 5 s shows the wake-up did it. The
    partition then moves to another master: the publisher listens there from then on."""
    slow_poll = PublisherOptions(block_ms=10_000, claim_every_ms=60_000)
    storage = RedisStorage(cluster, prefix=prefix, publisher=slow_poll)
    seen: list[int] = []
    store = Store(storage, events=ACCOUNT_EVENTS)
    store.subscribe("account", "recorder", lambda event: seen.append(event.event_number))
    outbox = storage.keys.outbox(storage.keys.partition("account", "acc-1"))
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        for count in range(1, 7):
            if count == 4:
                owner = redis_cluster.owner(cluster.keyslot(outbox))
                redis_cluster.reshard(outbox, to=next(n for n in redis_cluster.nodes
                                                      if n is not owner))
            write_count(store, "acc-1", 1)
            wait_for(lambda n=count: len(seen) >= n, f"event {count} relayed", timeout=5)  # type: ignore[misc]
    finally:
        store.close()
        thread.join(timeout=15)
    assert seen == [1, 2, 3, 4, 5, 6]


def test_an_append_that_sends_no_wake_up_is_relayed_within_block_ms(
    cluster: RedisCluster, prefix: str
) -> None:
    """An outbox that is not empty (here: an entry a dead publisher holds) gets no wake-up;
    the publisher still reads every outbox each block_ms."""
    options = PublisherOptions(block_ms=300, claim_idle_ms=60_000)
    storage = RedisStorage(cluster, prefix=prefix, partitions=1, publisher=options)
    seen: list[tuple[str, int]] = []
    store = Store(storage, events=ACCOUNT_EVENTS)
    store.subscribe("account", "recorder", lambda e: seen.append((e.entity_id, e.event_number)))
    Publisher(storage, store.bus).ensure_groups()
    write_count(store, "held", 1)
    cluster.xreadgroup(GROUP, "dead-publisher", {storage.keys.outbox(0): ">"}, count=10)
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        wait_for(lambda: cluster.xinfo_groups(storage.keys.outbox(0))[0]["consumers"] == 2,
                 "the publisher to read its outbox once")
        started = time.monotonic()
        write_count(store, "acc-1", 1)
        wait_for(lambda: ("acc-1", 1) in seen, "the event relayed", timeout=5)
        elapsed = time.monotonic() - started
    finally:
        store.close()
        thread.join(timeout=15)
    assert elapsed < 2.0


# -- Resharding -----------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[dramatiq.Broker]:
    """Dramatiq's Redis broker beside the cluster, on the standalone Redis."""
    from apps.delivery_kit import redis_broker
    from conftest import REDIS_URL, real_redis

    with real_redis() as client, redis_broker(client, "redis", REDIS_URL) as made:
        yield made


def test_moving_partitions_between_masters_under_load_loses_nothing(
    half: str, redis_cluster: RedisClusterServers, cluster: RedisCluster, prefix: str,
    broker: dramatiq.Broker,
) -> None:
    """The writers write through a Store or (`half` async) an AsyncStore each; the
    publisher and workers are the sync half's, as in production."""
    storage = RedisStorage(cluster, prefix=prefix, partitions=4, publisher=FAST_PUBLISHER)
    delivery = Delivery(storage, broker, events=ACCOUNT_EVENTS)
    recorder = Recorder()
    delivery.store.subscribe("account", "balances", recorder)
    delivery.start_store()
    delivery.start_worker(threads=4)
    heads: dict[str, int] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def write_until_stopped(writer: int) -> None:
        rng = random.Random(writer)
        store = delivery.store if half == "sync" else store_on(
            half, redis_cluster.async_client(), prefix=prefix, partitions=4)
        try:
            while not stop.is_set():
                entity_id = f"acc-{writer}-{rng.randrange(10)}"
                heads[entity_id] = write_count(store, entity_id,  # type: ignore[arg-type]
                                               rng.randint(1, 3))
        except BaseException as error:
            errors.append(error)
        finally:
            if store is not delivery.store:
                close(store)

    writers = [threading.Thread(target=write_until_stopped, args=(n,)) for n in range(3)]
    for thread in writers:
        thread.start()
    try:
        wait_for(lambda: len(heads) >= 10, "the writers to get going")
        moves = 0
        for _ in range(2):
            for partition in range(storage.partitions):
                outbox = storage.keys.outbox(partition)
                owner = redis_cluster.owner(cluster.keyslot(outbox))
                target = redis_cluster.nodes[(redis_cluster.nodes.index(owner) + 1) % 3]
                redis_cluster.reshard(outbox, to=target)
                moves += 1
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=60)
    try:
        assert errors == []
        assert moves == 8
        wait_for(lambda: recorder.has(heads), "every event handled after the moves", timeout=60)
        assert_exactly_once_in_order(recorder, heads)
        for entity_id, head in heads.items():
            assert [e.event_number for e in delivery.store.read("account", entity_id)] == list(
                range(1, head + 1)
            )
    finally:
        delivery.stop()


def test_a_write_to_a_slot_stuck_mid_move_is_sent_again_until_the_move_ends(
    half: str, redis_cluster: RedisClusterServers, cluster: RedisCluster, prefix: str
) -> None:
    """Half of a partition's keys moved, half not: the append script is refused (TRYAGAIN)
    for longer than redis-py retries on its own; the write waits and succeeds, once."""
    storage = RedisStorage(cluster, prefix=prefix, partitions=1)  # to look at what is stored
    store = store_on(half, cluster if half == "sync" else redis_cluster.async_client(),
                     prefix=prefix, partitions=1)
    write_count(store, "acc-1", 1)  # type: ignore[arg-type]
    slot = cluster.keyslot(storage.keys.outbox(0))
    source = redis_cluster.owner(slot)
    target = next(node for node in redis_cluster.nodes if node is not source)
    source_id, target_id = redis_cluster.node_id(source), redis_cluster.node_id(target)
    with source.client() as from_client, target.client() as to_client:
        to_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        from_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        from_client.migrate("127.0.0.1", target.port, storage.keys.heads("account", 0), 0, 5000)

    def finish_the_move() -> None:
        time.sleep(1.5)  # redis-py alone gives up after ~0.5 s of TRYAGAIN
        with source.client() as from_client:
            while keys := from_client.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                from_client.migrate("127.0.0.1", target.port, keys, 0, 5000)
        for node in [target, source, *redis_cluster.nodes]:
            with node.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)

    mover = threading.Thread(target=finish_the_move)
    mover.start()
    started = time.monotonic()
    try:
        assert write_count(store, "acc-1", 1) == 2  # type: ignore[arg-type]
    finally:
        mover.join(timeout=30)
    assert time.monotonic() - started > 1.0, "the write did not meet the half-moved slot"
    assert [e.event_number for e in store.read("account", "acc-1")] == [1, 2]
    assert cluster.xlen(storage.keys.outbox(0)) == 2
    if half == "async":
        close(store)


def test_redis_cluster_setting_takes_auto_true_or_false_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ES_REDIS_CLUSTER", " TRUE ")
    assert load_settings().redis_cluster == "true"
    monkeypatch.setenv("ES_REDIS_CLUSTER", "maybe")
    with pytest.raises(ConfigurationError, match="ES_REDIS_CLUSTER='maybe'"):
        load_settings()


def wait_calls(redis_cluster: RedisClusterServers) -> dict[str, int]:
    """WAIT commands each master has run (INFO commandstats)."""
    calls = {}
    for node in redis_cluster.nodes:
        with node.client() as client:
            stats = client.info("commandstats").get("cmdstat_wait", {})
            calls[f"127.0.0.1:{node.port}"] = int(stats.get("calls", 0))
    return calls


def test_an_append_waiting_for_replicas_sends_wait_to_the_master_that_ran_it(
    half: str, redis_cluster: RedisClusterServers, cluster: RedisCluster, prefix: str
) -> None:
    storage = RedisStorage(cluster, prefix=prefix)  # to look at what is stored
    store = store_on(half, cluster if half == "sync" else redis_cluster.async_client(),
                     prefix=prefix, durability=Durability(replicas=1, timeout_ms=10))
    entities = [f"acc-{i}" for i in range(12)]
    cluster.script_flush()  # every master forgets the script: the first writes load it
    expected = dict.fromkeys(wait_calls(redis_cluster), 0)
    for entity_id in entities:
        key = storage.keys.append_keys("account", entity_id)[0]
        expected[cluster.get_node_from_key(key).name] += 1
    for entity_id in entities:  # loads the script on every master (NOSCRIPT: sent again)
        with pytest.raises(DurabilityError):
            store.open("account", entity_id).write(Opened(owner="o"))
    before = wait_calls(redis_cluster)

    for entity_id in entities:
        with store.open("account", entity_id) as stream, pytest.raises(DurabilityError) as raised:
            list(stream.all())
            stream.write(Deposited(amount=1))  # the cluster has no replicas
        assert raised.value.confirmed == 0

    after = wait_calls(redis_cluster)
    assert {name: after[name] - before[name] for name in after} == expected
    assert all(storage.position("account", e) == 2 for e in entities)  # stored all the same
    if half == "async":
        close(store)


def test_an_append_through_the_async_storage_wakes_the_idle_cluster_publisher(
    redis_cluster: RedisClusterServers, cluster: RedisCluster, prefix: str
) -> None:
    """As above, with the events written by an AsyncRedisStorage on the cluster: its poll
    is 10 s, so each event relayed within 5 s shows the async append sent the wake-up."""
    slow_poll = PublisherOptions(block_ms=10_000, claim_every_ms=60_000)
    store = Store(RedisStorage(cluster, prefix=prefix, publisher=slow_poll),
                  events=ACCOUNT_EVENTS)
    seen: list[int] = []
    store.subscribe("account", "recorder", lambda event: seen.append(event.event_number))

    async def write(count: int) -> None:
        writer = AsyncStore(AsyncRedisStorage(redis_cluster.async_client(), prefix=prefix),
                            events=ACCOUNT_EVENTS)
        async with writer.open("account", "acc-1") as stream:
            async for _ in stream.all():
                pass
            await stream.write(Opened(owner="o") if count == 1 else Deposited(amount=count))
        await writer.close()

    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        for count in range(1, 4):
            asyncio.run(write(count))
            wait_for(lambda n=count: len(seen) >= n, f"event {count} relayed", timeout=5)  # type: ignore[misc]
    finally:
        store.close()
        thread.join(timeout=15)
    assert seen == [1, 2, 3]
