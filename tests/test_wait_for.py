"""Read-your-writes: Store.wait_for returns once the subscribers have handled the entity up
to an event, on the in-memory bus and on the Dramatiq bus (across processes)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import fakeredis
import pytest
import redis
import redis.asyncio
import redis.cluster
from apps.delivery_kit import Delivery, Recorder
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    EsError,
    Event,
    InMemoryStorage,
    ParkedError,
    RedisStorage,
    Store,
    SubscriberError,
    WaitTimeoutError,
)

AnyStorage = RedisStorage | InMemoryStorage


class Balances:
    """A projection: the handler is slow, so a read right after the write would miss it."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        time.sleep(0.05)
        if isinstance(event.content, Deposited):
            self.balances[event.entity_id] = (
                self.balances.get(event.entity_id, 0) + event.content.amount
            )


def test_wait_for_sees_the_projection_on_the_in_memory_bus(any_storage: AnyStorage) -> None:
    store = Store(any_storage, events=ACCOUNT_EVENTS)
    projection = Balances()
    store.subscribe("account", "balances", projection)
    store.subscribe("account", "audit", Recorder())
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        with store.open("account", "a1") as stream:
            stream.write(Opened(owner="ann"), Deposited(amount=7))
            store.wait_for("account", "a1", stream.position)
        assert projection.balances == {"a1": 7}
    finally:
        store.close()
        thread.join(timeout=10)


def test_wait_for_times_out_naming_the_subscribers_behind(any_storage: AnyStorage) -> None:
    store = Store(any_storage, events=ACCOUNT_EVENTS)
    store.subscribe("account", "balances", Balances())
    store.open("account", "a1").write(Opened(owner="ann"))  # no publisher runs

    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as caught:
        store.wait_for("account", "a1", 1, timeout=0.3)

    assert 0.3 <= time.monotonic() - started < 2
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, EsError)
    assert caught.value.behind == {"balances": 0}
    assert "balances (handled up to 0)" in str(caught.value)


def test_wait_for_refuses_an_unknown_subscriber(any_storage: AnyStorage) -> None:
    store = Store(any_storage, events=ACCOUNT_EVENTS)
    store.subscribe("account", "balances", Balances())
    with pytest.raises(SubscriberError, match=r"'nobody'.*known: balances"):
        store.wait_for("account", "a1", 1, subscriber_ids=["nobody"])


@pytest.fixture
def delivery(fast_storage: RedisStorage, broker: dramatiq.Broker) -> Iterator[Delivery]:
    made = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    yield made
    made.stop()


def test_wait_for_sees_the_projection_on_the_dramatiq_bus(delivery: Delivery) -> None:
    projection = Balances()
    delivery.store.subscribe("account", "balances", projection)
    delivery.start_store()
    delivery.start_worker()
    for amount, balance in ((3, 3), (4, 7)):
        with delivery.store.open("account", "a1") as stream:
            list(stream.all())
            stream.write(Deposited(amount=amount))
            delivery.store.wait_for("account", "a1", stream.position, timeout=10)
        assert projection.balances["a1"] == balance


def test_wait_for_with_no_worker_times_out_naming_the_lagging_subscriber(
    delivery: Delivery,
) -> None:
    delivery.store.subscribe("account", "balances", Balances())
    delivery.store.subscribe("account", "audit", Recorder())
    delivery.start_store()  # the publisher runs, no worker does
    delivery.store.open("account", "a1").write(Opened(owner="ann"))
    with pytest.raises(WaitTimeoutError) as caught:
        delivery.store.wait_for("account", "a1", 1, subscriber_ids=["audit"], timeout=0.5)
    assert caught.value.behind == {"audit": 0}


def test_wait_for_raises_parked_error_for_a_parked_entity(delivery: Delivery) -> None:
    delivery.store.subscribe("account", "fragile", Recorder(fail=lambda e: e.event_number == 2))
    delivery.start_store()
    delivery.start_worker()
    delivery.store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))

    with pytest.raises(ParkedError) as caught:
        delivery.store.wait_for("account", "a1", 2, timeout=20)
    assert (caught.value.subscriber_id, caught.value.event_number) == ("fragile", 2)
    assert "RuntimeError" in caught.value.error
    # Handled up to 1: waiting for event 1 returns.
    delivery.store.wait_for("account", "a1", 1, timeout=1)


def async_client_beside(storage: RedisStorage) -> Any:
    """A redis.asyncio client on the server of the test's storage (fakeredis, real Redis,
    or the cluster)."""
    if isinstance(storage.client, redis.cluster.RedisCluster):
        node = storage.client.get_default_node()
        return redis.asyncio.RedisCluster(host=node.host, port=node.port)
    kwargs = storage.client.connection_pool.connection_kwargs
    if "server" in kwargs:
        return fakeredis.FakeAsyncRedis(server=kwargs["server"])
    return redis.asyncio.Redis.from_url(REDIS_URL)


def test_async_store_wait_for_sees_what_the_workers_handled(delivery: Delivery) -> None:
    projection = Balances()
    delivery.store.subscribe("account", "balances", projection)
    delivery.store.subscribe("account", "fragile", Recorder(fail=lambda e: e.entity_id == "p"))
    delivery.start_store()
    delivery.start_worker()
    storage = AsyncRedisStorage(async_client_beside(delivery.storage),
                                prefix=delivery.storage.keys.prefix)

    async def run() -> None:
        async with AsyncStore(storage, events=ACCOUNT_EVENTS, bus=delivery.bus) as store:
            async with store.open("account", "a1") as stream:
                await stream.write(Opened(owner="ann"), Deposited(amount=9))
                await store.wait_for("account", "a1", stream.position, timeout=10)
            assert projection.balances == {"a1": 9}
            async with store.open("account", "p") as stream:
                await stream.write(Opened(owner="poison"))
            with pytest.raises(ParkedError):
                await store.wait_for("account", "p", 1, subscriber_ids=["fragile"], timeout=20)
            with pytest.raises(WaitTimeoutError):
                await store.wait_for("account", "a1", 3, timeout=0.3)

    asyncio.run(run())
