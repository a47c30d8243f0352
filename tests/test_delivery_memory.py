"""InMemoryEventBus, the default bus, as in the Go library: synchronous delivery to every
subscriber of the entity type; a handler error skips that event for that subscriber only
(logged with entity and event number); `write_to` reaches the named subscribers only.
Through `store.start()` it works on InMemoryStorage and on RedisStorage (the publisher then
hands it events read back from the store, upgraded).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from apps.delivery_kit import FAST_PUBLISHER, Recorder
from conftest import ACCOUNT_EVENTS, Deposited, Opened, Withdrawn
from kit import wait_for, write_at_head

from es_workers import (
    Event,
    InMemoryEventBus,
    InMemoryStorage,
    RedisStorage,
    Store,
    SubscriberError,
)

AnyStorage = RedisStorage | InMemoryStorage


def events_of(store: Store, entity_id: str) -> list[Event]:
    return list(store.read("account", entity_id))


@pytest.fixture
def store(any_storage: AnyStorage) -> Iterator[Store]:
    if isinstance(any_storage, RedisStorage):
        any_storage.publisher_options = FAST_PUBLISHER
    made = Store(any_storage, events=ACCOUNT_EVENTS)
    yield made
    made.close()


def running(store: Store) -> threading.Thread:
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    return thread


def test_every_subscriber_gets_every_event_through_start(store: Store) -> None:
    first, second = Recorder(), Recorder()
    store.subscribe("account", "first", first)
    store.subscribe("account", "second", second)
    thread = running(store)
    heads = {}
    for i in range(5):
        heads[f"acc-{i}"] = write_at_head(store, "account", f"acc-{i}", Opened(owner="x"))
        heads[f"acc-{i}"] = write_at_head(
            store, "account", f"acc-{i}", Deposited(amount=1), Deposited(amount=2)
        )
    wait_for(lambda: first.has(heads) and second.has(heads), "3 events x 5 entities, twice")
    store.close()
    thread.join(timeout=10)
    assert first.by_entity() == second.by_entity() == {entity_id: [1, 2, 3] for entity_id in heads}


def test_upgrades_apply_to_events_published_through_start(any_storage: AnyStorage) -> None:
    def negative(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event.content, Withdrawn):
                yield replace(event, content=Deposited(amount=-event.content.amount))
            else:
                yield event

    if isinstance(any_storage, RedisStorage):
        any_storage.publisher_options = FAST_PUBLISHER
    store = Store(any_storage, events=ACCOUNT_EVENTS, upgrades={"account": [negative]})
    recorder = Recorder()
    store.subscribe("account", "balances", recorder)
    thread = running(store)
    try:
        write_at_head(store, "account", "acc-1", Opened(owner="x"), Withdrawn(amount=3))
        wait_for(lambda: recorder.has({"acc-1": 2}), "2 events")
    finally:
        store.close()
        thread.join(timeout=10)
    assert recorder.contents["acc-1"] == [Opened(owner="x"), Deposited(amount=-3)]


def test_a_failing_subscriber_does_not_stop_the_publisher(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(fail=lambda event: event.entity_id == "bad")
    store.subscribe("account", "balances", recorder)
    thread = running(store)
    try:
        write_at_head(store, "account", "bad", Opened(owner="x"))
        write_at_head(store, "account", "good", Opened(owner="x"), Deposited(amount=1))
        wait_for(lambda: recorder.has({"good": 2}), "the good entity's events")
    finally:
        store.close()
        thread.join(timeout=10)
    assert recorder.by_entity() == {"good": [1, 2]}
    assert "bad" in caplog.text


def test_a_failing_subscriber_never_costs_a_healthy_one_its_events(store: Store) -> None:
    failing = Recorder(fail=lambda event: event.event_number == 1)
    healthy = Recorder()
    store.subscribe("account", "failing", failing)
    store.subscribe("account", "healthy", healthy)
    thread = running(store)
    try:
        heads = {"acc-1": write_at_head(store, "account", "acc-1", Opened(owner="x"))}
        heads["acc-1"] = write_at_head(store, "account", "acc-1", Deposited(amount=1))
        wait_for(lambda: healthy.has(heads) and failing.has(heads), "both subscribers")
    finally:
        store.close()
        thread.join(timeout=10)
    assert healthy.by_entity() == {"acc-1": [1, 2]}
    assert failing.by_entity() == {"acc-1": [2]}  # event 1 skipped for it alone


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_an_unreadable_event_does_not_stall_other_entities(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A payload stored without validation (model_construct) cannot be read back."""
    recorder = Recorder()
    store.subscribe("account", "balances", recorder)
    thread = running(store)
    try:
        write_at_head(store, "account", "broken", Deposited.model_construct(amount="x"))
        write_at_head(store, "account", "fine", Deposited(amount=1))
        wait_for(lambda: recorder.has({"fine": 1}), "the readable entity")
    finally:
        store.close()
        thread.join(timeout=10)
    assert recorder.by_entity() == {"fine": [1]}
    assert "'broken'" in caplog.text and "InvalidPayloadError" in caplog.text


def test_a_failing_subscriber_skips_that_event_and_costs_no_other_subscriber_an_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    write_at_head(store, "account", "acc-1", Opened(owner="x"), Deposited(amount=1),
                  Deposited(amount=2))
    calls: list[tuple[str, int]] = []

    def handler(name: str, fail_at: int | None = None) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
            if event.event_number == fail_at:
                raise RuntimeError(f"{name} fails at {fail_at}")
            calls.append((name, event.event_number))

        return handle

    bus = InMemoryEventBus()
    bus.subscribe("account", "a", handler("a", fail_at=2))
    bus.subscribe("account", "b", handler("b"))
    bus.subscribe("other", "c", handler("c"))

    bus.write("account", events_of(store, "acc-1"))

    assert calls == [("a", 1), ("b", 1), ("b", 2), ("a", 3), ("b", 3)]
    assert "subscriber a failed on account 'acc-1' event 2" in caplog.text
    assert "a fails at 2" in caplog.text  # the traceback is logged


def test_write_to_reaches_only_the_named_subscribers() -> None:
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    write_at_head(store, "account", "acc-1", Opened(owner="x"), Deposited(amount=1))
    bus = InMemoryEventBus()
    recorders = {name: Recorder() for name in ("a", "b", "c")}
    for name, recorder in recorders.items():
        bus.subscribe("account", name, recorder)

    bus.write_to("account", events_of(store, "acc-1"), ["b", "unknown"])

    assert {name: r.by_entity() for name, r in recorders.items()} == {
        "a": {}, "b": {"acc-1": [1, 2]}, "c": {}
    }


def test_subscriber_ids_are_per_entity_type_and_unique() -> None:
    bus = InMemoryEventBus()
    bus.subscribe("account", "balances", Recorder())
    bus.subscribe("order", "balances", Recorder())  # the same ID on another type is fine
    bus.subscribe("account", "audit", Recorder())
    with pytest.raises(SubscriberError, match="'balances' is already registered for 'account'"):
        bus.subscribe("account", "balances", Recorder())
    for bad in ["", "1abc", "has space", "a:b", "x" * 81]:
        with pytest.raises(SubscriberError, match="invalid subscriber ID"):
            bus.subscribe("account", bad, Recorder())
    assert bus.subscriber_ids("account") == ["balances", "audit"]
    assert bus.subscriber_ids("order") == ["balances"]
    assert bus.subscriber_ids("nothing") == []
