"""Two apps on one Redis with the same prefix must not share a subscriber ID: each would take
the other's notices. A publisher or worker records what each subscriber ID subscribes to
under the prefix when it starts, and refuses to start when another app recorded it with
other entity types. The same app with an entity type added starts, and extends the record."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from conftest import REDIS_URL, Deposited, Opened, delete_prefix, real_redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import MiddlewareError
from kit import wait_for

from es_workers import ConfigurationError, Content, DramatiqEventBus, RedisStorage, Store

ROOT = Path(__file__).resolve().parent.parent
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")


class Placed(Content):
    total: int


class Issued(Content):
    amount: int


# settings_app's event types by name (importing it would build its Store on ES_REDIS_URL).
EVENTS: dict[str, list[type[Content]]] = {"account": [Opened, Deposited], "order": [Placed],
                                          "invoice": [Issued]}


def app(storage: RedisStorage, subscriptions: dict[str, list[str]]) -> Store:
    """An app on the storage's prefix: each subscriber ID on the entity types given."""
    store = Store(storage, bus=DramatiqEventBus(StubBroker()), events=EVENTS)
    for subscriber_id, entity_types in subscriptions.items():
        for entity_type in entity_types:
            store.subscribe(entity_type, subscriber_id, lambda event: None)
    return store


def storage_of(client: redis.Redis, prefix: str) -> RedisStorage:
    return RedisStorage(client, prefix=prefix)


def bus_of(store: Store) -> DramatiqEventBus:
    assert isinstance(store.bus, DramatiqEventBus)
    return store.bus


def claim(store: Store) -> None:
    """What a worker of the app does as it boots."""
    bus_of(store).claim_subscribers()


def recorded(store: Store) -> dict[str, list[str] | None]:
    assert isinstance(store.storage, RedisStorage)
    return store.storage.subscribers.recorded()


def test_a_subscriber_id_another_app_runs_under_the_prefix_refuses_to_start(
    redis_client: redis.Redis, prefix: str
) -> None:
    first = app(storage_of(redis_client, prefix), {"audit": ["order"], "mail": ["order"]})
    claim(first)
    assert recorded(first) == {
        "audit": ["order"], "mail": ["order"]}

    other = app(storage_of(redis_client, prefix), {"audit": ["account"], "ledger": ["account"]})
    with pytest.raises(ConfigurationError) as raised:
        claim(other)
    message = str(raised.value)
    assert f"subscriber 'audit' runs under prefix {prefix!r} for entity types order" in message
    assert "this app subscribes it to account" in message
    assert "ES_PREFIX or another subscriber ID" in message
    assert f"HDEL {prefix}:subscribers audit" in message
    # Nothing of the refused app was recorded, not even its subscriber of its own.
    assert recorded(other) == {
        "audit": ["order"], "mail": ["order"]}

    # Its publisher refuses too, before relaying anything.
    with pytest.raises(ConfigurationError, match="subscriber 'audit' runs under prefix"):
        other.start()


def test_the_same_app_starts_again_and_with_an_entity_type_added_but_not_with_one_removed(
    redis_client: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = storage_of(redis_client, prefix)
    claim(app(storage, {"audit": ["account"]}))
    claim(app(storage, {"audit": ["account"]}))

    with caplog.at_level(logging.INFO, logger="es_workers.subscribers"):
        claim(app(storage, {"audit": ["account", "invoice"]}))
    assert storage.subscribers.recorded() == {"audit": ["account", "invoice"]}
    assert f"subscriber audit under prefix {prefix!r} now also subscribes to invoice" in (
        caplog.text)

    with pytest.raises(ConfigurationError, match=r"for entity types account, invoice .* "
                       r"subscribes it to account:"):
        claim(app(storage, {"audit": ["account"]}))


def test_an_unreadable_record_refuses_naming_it(redis_client: redis.Redis, prefix: str) -> None:
    storage = storage_of(redis_client, prefix)
    redis_client.hset(storage.subscribers.key, "audit", "not json")
    with pytest.raises(ConfigurationError, match="for entity types \\(an unreadable record\\)"):
        claim(app(storage, {"audit": ["account"]}))


@pytest.mark.single_redis
def test_a_dramatiq_worker_of_the_other_app_does_not_start(
    redis_client: redis.Redis, prefix: str
) -> None:
    claim(app(storage_of(redis_client, prefix), {"audit": ["order"]}))
    other = app(storage_of(redis_client, prefix), {"audit": ["account"]})
    worker = dramatiq.Worker(bus_of(other).broker, worker_timeout=20)
    try:
        with pytest.raises(MiddlewareError, match="subscriber 'audit' runs under prefix"):
            worker.start()
    finally:
        worker.stop()


@pytest.fixture
def shared_prefix() -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    delete_prefix(real_redis(), name)


@pytest.mark.parametrize("command", ["worker", "publish"])
def test_es_workers_worker_and_publish_of_the_other_app_exit_2_naming_the_subscriber(
    shared_prefix: str, command: str
) -> None:
    # Another app recorded `audit` on `order` under the prefix; settings_app has it on account.
    other = app(storage_of(real_redis(), shared_prefix), {"audit": ["order"]})
    claim(other)
    env = dict(os.environ, ES_REDIS_URL=REDIS_URL, ES_PREFIX=shared_prefix,
               PYTHONPATH=str(ROOT / "tests"))
    done = subprocess.run([ES_WORKERS, command, "settings_app:store"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "subscriber 'audit' runs under prefix" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_publisher_records_in_memory_subscribers_too(
    redis_client: redis.Redis, prefix: str
) -> None:
    # A publisher relays the prefix's outbox to the subscribers it knows, whatever its bus.
    store = Store(storage_of(redis_client, prefix), events=EVENTS)
    store.subscribe("account", "audit", lambda event: None)
    running = threading.Thread(target=store.start, daemon=True)
    running.start()
    try:
        wait_for(lambda: recorded(store), "the publisher to record its subscribers")
        assert recorded(store) == {"audit": ["account"]}
    finally:
        store.close()
        running.join(5)
