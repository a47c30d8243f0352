"""Guarantees 3, 5 and 6 at the publisher: every outbox entry is relayed at least once, an
entry is acknowledged only after its notices were sent, a dead publisher's entries are
claimed by another, several publishers may run at once, the bus being down is retried with
backoff, lost notices are re-sent by the sweep, and new subscribers are handed the history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import dramatiq
import pytest
from apps.delivery_kit import (
    FAST_PUBLISHER,
    Delivery,
    EnqueueCounter,
    FlakyStubBroker,
    Recorder,
    assert_exactly_once_in_order,
    check_quiet_while_no_worker_runs,
    stub_broker,
)
from conftest import ACCOUNT_EVENTS
from kit import wait_for
from kit import write_count as write

from es_workers import Event, RedisStorage, Storage, Store, admin
from es_workers.event import Handler
from es_workers.redis.keys import text
from es_workers.redis.publisher import GROUP, Publisher, PublisherOptions
from es_workers.upgrade import Reader


def outbox(storage: RedisStorage) -> tuple[int, int]:
    """(entries in the outboxes, entries read by a publisher but not acknowledged)."""
    length = pending = 0
    for partition in range(storage.partitions):
        key = storage.keys.outbox(partition)
        length += int(storage.client.xlen(key))
        if storage.client.exists(key):
            groups = storage.client.xinfo_groups(key)
            pending += sum(int(group["pending"]) for group in groups)
    return length, pending


def test_broker_down_entries_stay_unacknowledged_and_all_are_delivered_once_it_is_back(
    fast_storage: RedisStorage,
) -> None:
    broker = stub_broker()
    assert isinstance(broker, FlakyStubBroker)
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    recorder = Recorder()
    delivery.store.subscribe("account", "balances", recorder)
    broker.down.set()
    delivery.start_publisher(replace(FAST_PUBLISHER, min_backoff_ms=20, max_backoff_ms=200))
    delivery.start_worker()
    try:
        heads = {f"acc-{i}": write(delivery.store, f"acc-{i}", 3) for i in range(10)}
        wait_for(lambda: broker.refused >= 3, "the publisher to try the broker again")
        refused = broker.refused
        time.sleep(0.6)
        # It retries with backoff (one try per 100..200 ms by now), never spinning.
        assert 1 <= broker.refused - refused <= 15
        assert outbox(fast_storage)[0] == 10, "nothing may be acknowledged while sends fail"
        assert recorder.count() == 0

        broker.down.clear()
        wait_for(lambda: recorder.has(heads), "every event once the broker is back")
        wait_for(lambda: outbox(fast_storage) == (0, 0), "the outbox to be acknowledged")
    finally:
        delivery.stop()
    assert_exactly_once_in_order(recorder, heads)


def test_redis_down_the_publisher_retries_and_relays_everything_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import fakeredis

    caplog.set_level("INFO", logger="es_workers.publisher")

    server = fakeredis.FakeServer(version=(7, 0))
    storage = RedisStorage(fakeredis.FakeRedis(server=server), prefix="down")
    delivery = Delivery(storage, stub_broker(), events=ACCOUNT_EVENTS)
    recorder = Recorder()
    delivery.store.subscribe("account", "balances", recorder)
    heads = {f"acc-{i}": write(delivery.store, f"acc-{i}", 2) for i in range(5)}
    server.connected = False  # every command now fails with ConnectionError
    delivery.start_publisher(replace(FAST_PUBLISHER, min_backoff_ms=20, max_backoff_ms=200))
    delivery.start_worker()
    try:
        # It has tried, and failed, three times while Redis was down: nothing went through.
        wait_for(lambda: "(attempt 3)" in caplog.text, "the publisher to retry")
        assert recorder.count() == 0
        server.connected = True
        wait_for(lambda: recorder.has(heads), "every event once Redis is back")
        wait_for(lambda: outbox(storage) == (0, 0), "the outbox to be acknowledged")
    finally:
        delivery.stop()
    assert_exactly_once_in_order(recorder, heads)


def test_an_outage_logs_one_warning_per_retry_and_one_recovered_line(
    fast_storage: RedisStorage, caplog: pytest.LogCaptureFixture
) -> None:
    broker = stub_broker()
    assert isinstance(broker, FlakyStubBroker)
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    delivery.store.subscribe("account", "balances", Recorder())
    broker.down.set()
    caplog.set_level("INFO", logger="es_workers.publisher")
    delivery.start_publisher(replace(FAST_PUBLISHER, min_backoff_ms=20, max_backoff_ms=100))
    try:
        write(delivery.store, "acc-1", 1)
        wait_for(lambda: broker.refused >= 3, "a few refused sends")
        broker.down.clear()
        wait_for(lambda: "recovered after" in caplog.text, "the recovered line")
    finally:
        delivery.stop()
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert [m.rsplit("(attempt ", 1)[1] for m in retries] == [
        f"{n})" for n in range(1, len(retries) + 1)
    ]
    [recovered] = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert f"({len(retries)} failed attempts)" in recovered


def test_entries_of_a_publisher_killed_between_send_and_ack_are_claimed_by_another(
    fast_storage: RedisStorage,
) -> None:
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS)
    recorder = Recorder()
    delivery.store.subscribe("account", "balances", recorder)
    heads = {f"acc-{i}": write(delivery.store, f"acc-{i}", 2) for i in range(12)}
    # The "dead" publisher read every entry, sent notices for half of them, then died.
    client = fast_storage.client
    Publisher(fast_storage, delivery.bus).ensure_groups()
    read: Any = [  # one outbox at a time: on a cluster each is on a slot of its own
        stream
        for p in range(fast_storage.partitions)
        for stream in client.xreadgroup(  # type: ignore[union-attr]
            GROUP, "dead-publisher", {fast_storage.keys.outbox(p): ">"}, count=100
        )
    ]
    assert sum(len(entries) for _, entries in read) == 12
    for entity_id in list(heads)[:6]:
        delivery.bus.notify("account", entity_id, heads[entity_id])
    assert outbox(fast_storage) == (12, 12)

    started = time.monotonic()
    delivery.start_publisher()  # claim_idle_ms=200
    delivery.start_worker()
    try:
        wait_for(lambda: recorder.has(heads), "every event, the claimed ones included")
        wait_for(lambda: outbox(fast_storage) == (0, 0), "the claimed entries acknowledged")
    finally:
        delivery.stop()
    assert time.monotonic() - started >= 0.2, "claimed only once idle for claim_idle_ms"
    assert_exactly_once_in_order(recorder, heads)


def test_dead_publishers_holding_nothing_are_dropped_from_the_group(
    fast_storage: RedisStorage,
) -> None:
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS)
    delivery.store.subscribe("account", "balances", Recorder())
    options = PublisherOptions(claim_idle_ms=20)  # forgets consumers silent for 200 ms
    live = Publisher(fast_storage, delivery.bus, options)
    live.ensure_groups()
    key = fast_storage.keys.outbox(0)
    client = fast_storage.client
    client.xgroup_createconsumer(key, GROUP, "dead-publisher")
    write(delivery.store, "acc-0", 1)
    holding = fast_storage.keys.outbox(fast_storage.keys.partition("account", "acc-0"))
    streams = {holding: ">"}
    client.xreadgroup(GROUP, "dead-holding-entries", streams, count=10)  # type: ignore[arg-type]

    def idle_ms(name: str) -> int:
        return next(int(c["idle"]) for c in client.xinfo_consumers(key, GROUP)
                    if text(c["name"]) == name)

    wait_for(lambda: idle_ms("dead-publisher") > 250, "the dead publisher silent for 200 ms")

    live._forget_dead_consumers()

    names = {text(c["name"]) for k in (key, holding) for c in client.xinfo_consumers(k, GROUP)}
    assert "dead-publisher" not in names
    assert "dead-holding-entries" in names, "a consumer with pending entries must stay"


def test_two_publishers_at_once_deliver_every_event_once_in_order(
    fast_storage: RedisStorage, broker: dramatiq.Broker
) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    recorders = [Recorder(), Recorder()]
    delivery.store.subscribe("account", "balances", recorders[0])
    delivery.store.subscribe("account", "audit", recorders[1])
    delivery.start_publisher()
    delivery.start_publisher()
    delivery.start_worker()
    heads: dict[str, int] = {}

    def writer(offset: int) -> None:
        for round_ in range(5):
            for i in range(offset, 40, 2):
                heads[f"acc-{i}"] = write(delivery.store, f"acc-{i}", 1 + round_ % 2)

    try:
        writers = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        wait_for(lambda: all(r.has(heads) for r in recorders), "every event to both")
        wait_for(lambda: outbox(fast_storage) == (0, 0), "the outbox to be acknowledged")
    finally:
        delivery.stop()
    for recorder in recorders:
        assert_exactly_once_in_order(recorder, heads)


def test_sweep_resends_a_notice_that_was_lost(fast_storage: RedisStorage) -> None:
    broker = stub_broker()
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)  # redrive_after_ms=300
    recorder = Recorder()
    delivery.store.subscribe("account", "balances", recorder)
    delivery.start_publisher()
    try:
        wait_for(lambda: admin.status(delivery.store).subscribers[0].caught_up, "catch-up done")
        heads = {f"acc-{i}": write(delivery.store, f"acc-{i}", 2) for i in range(5)}
        wait_for(lambda: outbox(fast_storage) == (0, 0), "the entries relayed")
        assert fast_storage.state.due_count("balances") == 5
        resent = EnqueueCounter()
        broker.add_middleware(resent)
        broker.flush_all()  # the notices are lost, as if a worker died holding them
        delivery.start_worker()
        wait_for(lambda: recorder.has(heads), "the sweep to re-send the lost notices")
        assert resent.count >= 1, "handled from notices sent after the loss: re-sent"
    finally:
        delivery.stop()
    assert_exactly_once_in_order(recorder, heads)
    assert fast_storage.state.due_count("balances") == 0, "nothing is due once handled"



def test_while_no_worker_runs_waiting_notices_are_not_sent_again_and_logged_once(
    fast_storage: RedisStorage, broker: dramatiq.Broker, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="es_workers.publisher")
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    try:
        check_quiet_while_no_worker_runs(
            delivery, lambda: [r.getMessage() for r in list(caplog.records)])
    finally:
        delivery.stop()


class RecordingBus:
    """A NotifyingEventBus that only records the notices it is asked to send."""

    def __init__(self, *subscriber_ids: str) -> None:
        self.ids = list(subscriber_ids)
        self.notices: list[tuple[str, str, int | None, tuple[str, ...]]] = []

    def bind(self, reader: Reader, storage: Storage) -> None:
        pass

    def notify(
        self, entity_type: str, entity_id: str, event_number: int | None,
        subscriber_ids: Sequence[str] | None = None,
    ) -> None:
        targets = tuple(self.ids if subscriber_ids is None else subscriber_ids)
        self.notices.append((entity_type, entity_id, event_number, targets))

    def notify_many(
        self, entity_type: str, positions: Sequence[tuple[str, int | None]],
        subscriber_ids: Sequence[str] | None = None,
    ) -> None:
        for entity_id, event_number in positions:
            self.notify(entity_type, entity_id, event_number, subscriber_ids)

    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler) -> None:
        self.ids.append(subscriber_id)

    def subscriber_ids(self, entity_type: str) -> list[str]:
        return list(self.ids)

    def write(self, entity_type: str, events: Iterable[Event]) -> None:
        raise AssertionError("a notifying bus is sent notices, not events")

    def write_to(self, entity_type: str, events: Iterable[Event], ids: Sequence[str]) -> None:
        raise AssertionError("a notifying bus is sent notices, not events")

    def close(self) -> None:
        pass


def test_one_notice_per_entity_and_batch_with_its_highest_event_number(
    storage: RedisStorage,
) -> None:
    bus = RecordingBus("balances")
    store = Store(storage, bus=bus, events=ACCOUNT_EVENTS)
    storage.state.mark_caught_up("account", "balances")  # no catch-up here
    for _ in range(3):
        write(store, "acc-1", 2)
    write(store, "acc-2", 1)
    publisher = Publisher(storage, bus, PublisherOptions(block_ms=10))
    publisher.ensure_groups()

    for _ in range(3):
        publisher.step()

    assert sorted(bus.notices) == [
        ("account", "acc-1", 6, ("balances",)),
        ("account", "acc-2", 1, ("balances",)),
    ]
    assert outbox(storage) == (0, 0)


def test_catch_up_pages_through_the_history_and_resumes_from_its_cursor(
    storage: RedisStorage,
) -> None:
    bus = RecordingBus()
    store = Store(storage, bus=bus, events=ACCOUNT_EVENTS)
    ids = [f"acc-{i:02}" for i in range(23)]
    for entity_id in ids:
        write(store, entity_id, 1)
    store.subscribe("account", "late", Recorder())
    options = PublisherOptions(catch_up_page=10)
    assert Publisher(storage, bus, options).hand_over_history()  # one page, then it dies
    assert storage.state.catch_up_cursor("account", "late") is not None
    second = Publisher(storage, bus, options)
    while second.hand_over_history():
        pass
    handed = [entity_id for _, entity_id, number, targets in bus.notices if targets == ("late",)]
    assert all(number is None for *_, number, _ in bus.notices)
    assert handed == ids, "each entity once, oldest first"
    assert storage.state.is_caught_up("account", "late")
    assert storage.state.catch_up_cursor("account", "late") is None


def test_malformed_outbox_entry_is_dropped_and_relaying_goes_on(
    storage: RedisStorage, caplog: pytest.LogCaptureFixture
) -> None:
    bus = RecordingBus("balances")
    store = Store(storage, bus=bus, events=ACCOUNT_EVENTS)
    storage.state.mark_caught_up("account", "balances")
    storage.client.xadd(storage.keys.outbox(0), {"type": "account", "oops": "1"})
    write(store, "acc-1", 1)
    publisher = Publisher(storage, bus, PublisherOptions(block_ms=10))
    publisher.ensure_groups()

    for _ in range(3):
        publisher.step()

    assert [notice[1] for notice in bus.notices] == ["acc-1"]
    assert outbox(storage) == (0, 0)
    assert "malformed" in caplog.text


def test_sweep_resends_catch_up_notices_that_were_lost(fast_storage: RedisStorage) -> None:
    """A late subscriber's history notices are tracked like live ones: lost (a worker
    killed holding them), they are sent again."""
    broker = stub_broker()
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    heads = {f"acc-{i}": write(delivery.store, f"acc-{i}", 2) for i in range(6)}
    relayed_long_ago = Publisher(fast_storage, delivery.bus, FAST_PUBLISHER)
    relayed_long_ago.ensure_groups()
    while outbox(fast_storage) != (0, 0):
        relayed_long_ago.step()  # to no subscriber at all
    recorder = Recorder()
    delivery.store.subscribe("account", "late", recorder)
    delivery.start_publisher()
    try:
        wait_for(lambda: admin.status(delivery.store).subscribers[0].caught_up, "catch-up sent")
        broker.flush_all()  # every notice lost
        delivery.start_worker()
        wait_for(lambda: recorder.has(heads), "the sweep to re-send the history")
    finally:
        delivery.stop()
    assert_exactly_once_in_order(recorder, heads)


def test_a_publisher_stopped_right_after_a_round_acknowledges_that_round(
    storage: RedisStorage,
) -> None:
    """On a single Redis a round's entries are acknowledged with the next read; a publisher
    asked to stop while it sends (no next read comes) acknowledges them as it stops."""
    stop = threading.Event()

    class StoppingBus(RecordingBus):
        def notify_many(self, entity_type: str, positions: Sequence[tuple[str, int | None]],
                        subscriber_ids: Sequence[str] | None = None) -> None:
            super().notify_many(entity_type, positions, subscriber_ids)
            stop.set()  # the loop ends after this round

    bus = StoppingBus("balances")
    store = Store(storage, bus=bus, events=ACCOUNT_EVENTS)
    storage.state.mark_caught_up("account", "balances")
    for i in range(5):
        write(store, f"acc-{i}", 1)
    publisher = Publisher(storage, bus, PublisherOptions(block_ms=10))
    publisher.run(stop)

    assert sorted(notice[1] for notice in bus.notices) == [f"acc-{i}" for i in range(5)]
    assert outbox(storage) == (0, 0)
