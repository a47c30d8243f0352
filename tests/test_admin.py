"""Delivery state as the `es-workers` admin commands see it: status (outbox backlog, lag and
parked entities per subscriber), parked retry/skip refusals, and replay of the history."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from apps.delivery_kit import (
    FAST_PUBLISHER,
    Delivery,
    Recorder,
    assert_exactly_once_in_order,
    redis_broker,
)
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened
from kit import wait_for, write_at_head

from es_workers import (
    ConfigurationError,
    Content,
    InMemoryStorage,
    NotParkedError,
    RedisStorage,
    Store,
    UnknownNameError,
    admin,
)


@pytest.fixture
def delivery(
    redis_client: redis.Redis, prefix: str, backend: str
) -> Iterator[Delivery]:
    storage = RedisStorage(redis_client, prefix=prefix, publisher=FAST_PUBLISHER)
    with redis_broker(redis_client, backend, REDIS_URL) as broker:
        made = Delivery(storage, broker, events=ACCOUNT_EVENTS)
        yield made
        made.stop()


def write(delivery: Delivery, entity_id: str, *amounts: int) -> int:
    head = delivery.storage.position("account", entity_id)
    contents: list[Content] = [Deposited(amount=a) for a in amounts]
    if head == 0:
        contents.insert(0, Opened(owner=entity_id))
    return write_at_head(delivery.store, "account", entity_id, *contents)


def by_subscriber(status: admin.StoreStatus) -> dict[str, admin.SubscriberStatus]:
    return {s.subscriber_id: s for s in status.subscribers}


def test_status_shows_backlog_then_lag_then_nothing(delivery: Delivery) -> None:
    balances, audit = Recorder(), Recorder()
    delivery.store.subscribe("account", "balances", balances)
    delivery.store.subscribe("account", "audit", audit)
    heads = {"acc-1": write(delivery, "acc-1", 1, 2), "acc-2": write(delivery, "acc-2")}
    heads["acc-1"] = write(delivery, "acc-1", 3)  # 3 appends: 3 outbox entries, 5 events

    status = admin.status(delivery.store)
    assert status.outbox_backlog == 3
    assert by_subscriber(status)["balances"] == admin.SubscriberStatus(
        entity_type="account", subscriber_id="balances", caught_up=False,
        lagging_entities=2, events_behind=5, parked=[],
    )
    json.dumps(status.to_dict())  # what `es-workers status --json` prints

    delivery.start_store()  # relayed, but no worker yet: lag, no backlog
    wait_for(lambda: admin.status(delivery.store).outbox_backlog == 0, "the outbox relayed")
    wait_for(lambda: all(s.caught_up for s in admin.status(delivery.store).subscribers),
             "catch-up done")
    status = admin.status(delivery.store)
    assert {(s.subscriber_id, s.lagging_entities, s.events_behind)
            for s in status.subscribers} == {("balances", 2, 5), ("audit", 2, 5)}

    delivery.start_worker()
    wait_for(lambda: balances.has(heads) and audit.has(heads), "every event handled")
    wait_for(lambda: all(s.events_behind == 0 for s in admin.status(delivery.store).subscribers),
             "no lag")
    status = admin.status(delivery.store)
    assert status.outbox_backlog == 0
    assert all(s.lagging_entities == 0 and s.parked == [] for s in status.subscribers)


def test_replay_hands_one_subscriber_the_whole_history_again(delivery: Delivery) -> None:
    balances, audit = Recorder(), Recorder()
    delivery.store.subscribe("account", "balances", balances)
    delivery.store.subscribe("account", "audit", audit)
    heads = {f"acc-{i}": write(delivery, f"acc-{i}", *range(i % 4)) for i in range(12)}
    delivery.start_store()
    delivery.start_worker()
    wait_for(lambda: balances.has(heads) and audit.has(heads), "every event handled")
    audited = audit.count()
    balances.calls.clear()  # the read model is cleared before a replay

    progress: list[int] = []
    sent = admin.replay(delivery.store, "balances", progress=progress.append, page_size=5)

    assert sent == 12 and progress == [5, 10, 12]
    wait_for(lambda: balances.has(heads), "the history handled again")
    assert_exactly_once_in_order(balances, heads)
    assert audit.count() == audited, "other subscribers are not replayed"


def test_retry_or_skip_of_an_entity_that_is_not_parked_is_refused(delivery: Delivery) -> None:
    delivery.store.subscribe("account", "balances", Recorder())
    write(delivery, "acc-1", 1)
    with pytest.raises(NotParkedError, match="'acc-1' is not parked for subscriber 'balances'"):
        admin.retry_parked(delivery.store, "balances", "account", "acc-1")
    with pytest.raises(NotParkedError):
        admin.skip_parked(delivery.store, "balances", "account", "acc-1")
    assert admin.parked(delivery.store, "balances", "account") == []


def test_unknown_subscribers_and_entity_types_are_refused_naming_the_known_ones(
    delivery: Delivery,
) -> None:
    delivery.store.subscribe("account", "balances", Recorder())
    with pytest.raises(UnknownNameError, match=r"'nobody' is not registered.*'balances'"):
        admin.replay(delivery.store, "nobody")
    with pytest.raises(UnknownNameError, match=r"unknown entity type 'nosuchtype'.*'account'"):
        admin.replay(delivery.store, "balances", "nosuchtype")
    with pytest.raises(UnknownNameError, match="'nobody' is not registered for 'account'"):
        admin.parked(delivery.store, "nobody", "account")
    with pytest.raises(UnknownNameError, match="unknown entity type"):
        admin.skip_parked(delivery.store, "balances", "acount", "acc-1")


def test_admin_needs_redis_storage_and_a_notifying_bus() -> None:
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    with pytest.raises(ConfigurationError, match="RedisStorage"):
        admin.status(store)
    import fakeredis

    redis_store = Store(RedisStorage(fakeredis.FakeRedis()), events=ACCOUNT_EVENTS)
    with pytest.raises(ConfigurationError, match="DramatiqEventBus"):
        admin.replay(redis_store, "balances", "account")


def test_lost_replay_notices_are_sent_again(delivery: Delivery) -> None:
    balances = Recorder()
    delivery.store.subscribe("account", "balances", balances)
    heads = {f"acc-{i}": write(delivery, f"acc-{i}", 1) for i in range(5)}
    delivery.start_store()
    delivery.start_worker()
    wait_for(lambda: balances.has(heads), "every event handled")
    wait_for(lambda: due(delivery, "balances") == 0, "the sweep to forget handled notices")
    delivery.worker.stop()  # type: ignore[union-attr]
    balances.calls.clear()

    admin.replay(delivery.store, "balances")
    delivery.broker.flush_all()  # the replay's notices are lost
    delivery.start_worker()

    wait_for(lambda: balances.has(heads), "the sweep to re-send the replay")
    assert_exactly_once_in_order(balances, heads)


def due(delivery: Delivery, subscriber_id: str) -> int:
    return delivery.storage.state.due_count(subscriber_id)
