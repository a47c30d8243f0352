"""The workers' ports (`ports.SubscriberStorage`): DramatiqEventBus takes any storage that
keeps subscriber state, refuses one that does not with a ConfigurationError naming what it
lacks, and its workers see es_workers errors only (the Redis adapter translates)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from conftest import ACCOUNT_EVENTS, Opened, delete_prefix, real_redis
from dramatiq.brokers.stub import StubBroker
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import TcpProxy

from es_workers import (
    ConfigurationError,
    DramatiqEventBus,
    Event,
    InMemoryStorage,
    RedisStorage,
    StorageUnavailableError,
    Store,
)
from es_workers.ports import (
    Failure,
    SubscriberState,
    SubscriberStorage,
    subscriber_storage,
)
from es_workers.upgrade import Reader


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"ports-{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(real_redis(), name)


class Delegating:
    """A storage that is not a RedisStorage: every call goes to the one it wraps."""

    def __init__(self, inner: RedisStorage) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class StateOnly(InMemoryStorage):
    """A storage with subscriber state but neither heartbeats nor a subscriber registry."""

    def subscriber_state(self) -> SubscriberState:
        raise AssertionError("not called: the storage is refused first")


def test_a_storage_without_subscriber_state_is_refused_naming_what_it_lacks() -> None:
    bus = DramatiqEventBus(StubBroker())
    with pytest.raises(ConfigurationError) as raised:
        Store(InMemoryStorage(), bus=bus, events=ACCOUNT_EVENTS)
    message = str(raised.value)
    assert "DramatiqEventBus needs a storage that keeps subscriber state" in message
    assert "SubscriberStorage" in message
    assert ("InMemoryStorage has no subscriber_state(), process_heartbeats(), "
            "subscriber_registry()") in message

    with pytest.raises(ConfigurationError) as partly:
        bus.bind(Reader(InMemoryStorage().read, {}), StateOnly())
    assert "StateOnly has no process_heartbeats(), subscriber_registry()" in str(partly.value)
    assert "subscriber_state()" not in str(partly.value)


def test_subscriber_storage_is_a_capability_not_a_type(prefix: str) -> None:
    storage = RedisStorage(real_redis(), prefix=prefix)
    assert isinstance(storage, SubscriberStorage)
    assert subscriber_storage(storage, "a test") is storage
    assert isinstance(storage.subscriber_state(), SubscriberState)
    assert not isinstance(InMemoryStorage(), SubscriberStorage)


def test_the_bus_delivers_through_any_storage_that_keeps_subscriber_state(prefix: str) -> None:
    # Before the ports, DramatiqEventBus refused all but RedisStorage at run time.
    broker = StubBroker()
    broker.emit_after("process_boot")
    bus = DramatiqEventBus(broker)
    storage = Delegating(RedisStorage(real_redis(), prefix=prefix))
    store = Store(storage, bus=bus, events=ACCOUNT_EVENTS)
    handled: list[tuple[str, int]] = []
    store.subscribe("account", "balances", lambda event: handled.append(
        (event.entity_id, event.event_number)))
    store.open("account", "a1").write(Opened(owner="a"), Opened(owner="b"))
    bus.notify("account", "a1", None)
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("balances", fail_fast=True)
        worker.join()
    finally:
        worker.stop()
    assert handled == [("a1", 1), ("a1", 2)]


@pytest.fixture
def down_storage(tcp_proxy: Callable[[tuple[str, int]], TcpProxy],
                 prefix: str) -> Iterator[RedisStorage]:
    """A RedisStorage whose Redis (behind a proxy) has gone down since it was opened."""
    options = real_redis().connection_pool.connection_kwargs
    proxy = tcp_proxy((options["host"], options["port"]))
    client = redis.Redis(host="127.0.0.1", port=proxy.port, db=options.get("db", 0),
                         socket_connect_timeout=0.5, socket_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))  # one try: eleven calls fail fast
    storage = RedisStorage(client, prefix=prefix)
    proxy.down()
    yield storage
    client.close()


def test_the_workers_ports_on_redis_raise_storage_unavailable_not_redis_errors(
    down_storage: RedisStorage,
) -> None:
    state = down_storage.subscriber_state()
    e = state.entity("balances", "account", "a1")
    failure = Failure(1, "RuntimeError: x", "", 10)
    calls: dict[str, Callable[[], object]] = {
        "begin": lambda: state.begin([e], [1], "token", 1000, 10),
        "commit": lambda: state.commit([e], [1], "token", 1000, release=True),
        "unlock": lambda: state.unlock([e], "token"),
        "renew": lambda: state.renew([e], "token", 1000),
        "fail": lambda: state.fail(e, "token", failure, 5),
        "mark_due": lambda: state.mark_due([e]),
        "hold_pause": lambda: state.hold_pause("balances", "token", 1000),
        "locked": lambda: state.locked("balances"),
        "start_over": lambda: state.start_over("balances", "account"),
        "beat": lambda: down_storage.process_heartbeats().beat("worker"),
        "claim": lambda: down_storage.subscriber_registry().claim({"balances": ["account"]}),
    }
    for name, call in calls.items():
        with pytest.raises(StorageUnavailableError) as raised:
            call()
        assert isinstance(raised.value.cause, redis.ConnectionError), name


def test_a_worker_with_redis_down_sees_storage_unavailable(down_storage: RedisStorage) -> None:
    bus = DramatiqEventBus(StubBroker())
    store = Store(down_storage, bus=bus, events=ACCOUNT_EVENTS)

    def handler(event: Event) -> None:
        raise AssertionError("nothing to handle")

    store.subscribe("account", "balances", handler)
    with pytest.raises(StorageUnavailableError) as raised:
        bus.actor("balances")("account", "a1", 1)  # the actor's function, run here
    assert "beginning account 'a1' for balances" in str(raised.value)
