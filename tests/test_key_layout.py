"""Where a prefix's keys live: hash tags that name the prefix, chosen by slot so that the
partitions spread evenly over a cluster's masters, a warning when one master serves more
than its share, and prefixes written with the old `{pN}` tags refused until
`es-workers migrate-keys` renamed their keys (which keeps every event, checkpoint and
consumer group).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from apps.delivery_kit import (
    FAST_PUBLISHER,
    Delivery,
    Recorder,
    assert_exactly_once_in_order,
    stub_broker,
)
from conftest import ACCOUNT_EVENTS, REDIS_URL, delete_prefix, real_redis
from kit import wait_for, write_count
from redis.cluster import RedisCluster
from servers import RedisClusterServers

from es_workers import ConfigurationError, RedisStorage, Store, admin
from es_workers.redis.cluster import partition_masters
from es_workers.redis.keys import RedisKeys, legacy_tag
from es_workers.redis.migration import migrate_keys, needs_migration

ES_WORKERS = str(Path(sys.executable).parent / "es-workers")


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> Iterator[RedisCluster]:
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture
def prefixes(redis_client: redis.Redis) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        delete_prefix(redis_client, name)


def fresh(prefixes: list[str]) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    prefixes.append(name)
    return name


@pytest.mark.servers
def test_twelve_partitions_land_four_on_each_of_three_masters_and_prefixes_share_no_slot(
    cluster: RedisCluster,
) -> None:
    names = [f"t-{uuid.uuid4().hex[:12]}", "es"]
    slots = []
    for name in names:
        keys = RedisKeys(name, 12)
        assert sorted(partition_masters(cluster, keys).values()) == [4, 4, 4], name
        slots.append({cluster.keyslot(keys.outbox(p)) for p in range(12)})
        assert len(slots[-1]) == 12
    assert not slots[0] & slots[1], "two prefixes share a slot"


@pytest.mark.servers
def test_status_warns_when_one_master_serves_more_than_its_share(
    redis_cluster: RedisClusterServers, cluster: RedisCluster,
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    store = Store(RedisStorage(cluster, prefix=prefix, partitions=12), events=ACCOUNT_EVENTS)
    try:
        assert admin.status(store).warnings == []
        outbox = store.storage.keys.outbox(0)  # type: ignore[attr-defined]
        home = cluster.get_node_from_key(outbox).port
        other = next(n for n in redis_cluster.nodes if n.port != home)
        redis_cluster.reshard(outbox, to=other)
        try:
            cluster.nodes_manager.initialize()
            (warning,) = admin.status(store).warnings
            assert f":{other.port} serves 5 of its 12 partitions" in warning
            assert "more than its share of 4" in warning
        finally:
            back = next(n for n in redis_cluster.nodes if n.port == home)
            redis_cluster.reshard(outbox, to=back)
    finally:
        delete_prefix(cluster, prefix)  # type: ignore[arg-type]


def to_old_layout(client: redis.Redis, storage: RedisStorage) -> int:
    """Makes the prefix look as an earlier es_workers left it: every key under a partition
    tag renamed to `{pN}`, no layout recorded."""
    keys, moved = storage.keys, 0
    for partition in range(keys.partitions):
        tag = keys.tag(partition)
        for raw in list(client.scan_iter(f"{tag}:*", count=1000)):
            name = raw.decode() if isinstance(raw, bytes) else raw
            old = legacy_tag(keys.prefix, partition) + name.removeprefix(tag)
            client.restore(old, 0, client.dump(raw), replace=True)
            client.delete(raw)
            moved += 1
    client.hdel(keys.meta(), "layout")
    return moved


def test_an_old_layout_is_refused_naming_the_command_which_migrates_it_losing_nothing(
    redis_client: redis.Redis, backend: str, prefixes: list[str],
) -> None:
    prefix = fresh(prefixes)
    storage = RedisStorage(redis_client, prefix=prefix, partitions=4, publisher=FAST_PUBLISHER)
    delivery = Delivery(storage, stub_broker(), events=ACCOUNT_EVENTS)
    recorder = Recorder()
    delivery.store.subscribe("account", "balances", recorder)
    delivery.start_publisher()
    delivery.start_worker()
    heads = {f"acc-{i}": write_count(delivery.store, f"acc-{i}", 2) for i in range(8)}
    try:
        wait_for(lambda: recorder.has(heads), "every event handled")
    finally:
        delivery.stop()
    checkpoints = storage.state.checkpoints("balances", "account")
    moved = to_old_layout(redis_client, storage)
    assert moved > 8

    with pytest.raises(ConfigurationError) as refused:
        RedisStorage(redis_client, prefix=prefix)
    assert f"es-workers migrate-keys --prefix {prefix}" in str(refused.value)
    assert needs_migration(redis_client, prefix)

    if backend == "redis":  # the command, as a user runs it
        result = subprocess.run(
            [ES_WORKERS, "migrate-keys", "--prefix", prefix, "--yes"], capture_output=True,
            text=True, timeout=60, env={**os.environ, "ES_REDIS_URL": REDIS_URL},
        )
        assert result.returncode == 0, result.stderr
        assert f"{moved} keys renamed" in result.stdout
    else:
        assert migrate_keys(redis_client, prefix).keys == moved
    assert not needs_migration(redis_client, prefix)
    assert migrate_keys(redis_client, prefix).already, "running it again changes nothing"

    storage = RedisStorage(redis_client, prefix=prefix, publisher=FAST_PUBLISHER)
    assert storage.state.checkpoints("balances", "account") == checkpoints
    delivery = Delivery(storage, stub_broker(), events=ACCOUNT_EVENTS)
    delivery.store.subscribe("account", "balances", recorder)
    delivery.start_publisher()
    delivery.start_worker()
    try:
        for entity_id in heads:  # appends go on after the old events, delivered once
            heads[entity_id] = write_count(delivery.store, entity_id, 1)
        wait_for(lambda: recorder.has(heads), "the new events handled")
    finally:
        delivery.stop()
    assert_exactly_once_in_order(recorder, heads)
    assert list(redis_client.scan_iter(f"{prefix}:{{p*", count=1000)) == []


def test_migrate_keys_refuses_a_prefix_that_does_not_exist() -> None:
    real_redis().close()
    result = subprocess.run(
        [ES_WORKERS, "migrate-keys", "--prefix", f"t-none-{uuid.uuid4().hex[:8]}", "--yes"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ES_REDIS_URL": REDIS_URL},
    )
    assert result.returncode == 2, "a configuration error"
    assert "no prefix" in result.stderr
