"""Event metadata: stored with the events on every storage, bounded, and recorded
automatically (causation and correlation) when a handler writes, on every bus."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dramatiq
import pytest
from apps.delivery_kit import Delivery
from conftest import ACCOUNT_EVENTS, Deposited, Opened
from kit import wait_for, write_at_head

from es_workers import (
    Content,
    Event,
    InMemoryStorage,
    InvalidMetadataError,
    RedisStorage,
    Store,
)
from es_workers.metadata import MAX_ENTRIES, MAX_KEY, MAX_VALUE, handling

AnyStorage = RedisStorage | InMemoryStorage


def test_metadata_round_trips_and_a_root_write_stores_none(any_storage: AnyStorage) -> None:
    store = Store(any_storage, events=ACCOUNT_EVENTS)
    given = {"user": "ada", "request:id": "r-1", "note": "ünïcødé ✓", "empty": ""}
    store.open("account", "a1").write(Opened(owner="ada"), Deposited(amount=1), metadata=given)
    store.open("account", "a2").write(Opened(owner="bob"))

    first, second = store.open("account", "a1").all()
    (root,) = store.open("account", "a2").all()

    assert dict(first.metadata) == dict(second.metadata) == given
    assert dict(root.metadata) == {}
    assert root.correlation_id == root.store_event_id and root.causation_id is None
    with pytest.raises(TypeError):
        first.metadata["user"] = "eve"  # type: ignore[index]
    if isinstance(any_storage, RedisStorage):  # nothing extra stored for a root event
        key = any_storage.keys.stream("account", "a2")
        ((_, fields),) = any_storage.client.xrange(key)
        assert set(fields) == {b"n", b"d", b"t", b"e", b"p"}  # p: its log number


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(MAX_ENTRIES + 1)},
        {"": "empty key"},
        {"k" * (MAX_KEY + 1): "long key"},
        {"has space": "v"},
        {"k": "v" * (MAX_VALUE + 1)},
        {"k": 7},
        {7: "v"},
        [("k", "v")],
    ],
)
def test_metadata_beyond_the_limits_is_refused_and_nothing_is_stored(
    any_storage: AnyStorage, metadata: object
) -> None:
    store = Store(any_storage, events=ACCOUNT_EVENTS)
    with pytest.raises(InvalidMetadataError) as caught:
        store.open("account", "a1").write(Opened(owner="x"), metadata=metadata)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert list(store.open("account", "a1").all()) == []


class OrderPlaced(Content):
    amount: int


class InvoiceIssued(Content):
    order_id: str


ORDER_EVENTS: dict[str, list[type[Content]]] = {
    "order": [OrderPlaced], "invoice": [InvoiceIssued]
}


def invoicer(store: Store, seen: list[Event]) -> None:
    """A subscriber of orders that writes an invoice per order (and records the invoices)."""

    @store.subscribe("order", "invoicer")
    def issue(event: Event) -> None:
        write_at_head(store, "invoice", f"inv-{event.entity_id}",
                      InvoiceIssued(order_id=event.entity_id))

    @store.subscribe("invoice", "ledger")
    def record(event: Event) -> None:
        seen.append(event)


def assert_caused_by(invoice: Event, order: Event) -> None:
    assert invoice.causation_id == order.store_event_id
    assert invoice.correlation_id == order.correlation_id == order.store_event_id


def test_a_handler_write_records_its_cause_on_the_in_memory_bus(any_storage: AnyStorage) -> None:
    store = Store(any_storage, events=ORDER_EVENTS)
    invoices: list[Event] = []
    invoicer(store, invoices)
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        store.open("order", "o1").write(OrderPlaced(amount=5))
        wait_for(lambda: len(invoices) == 1, "the invoice")
    finally:
        store.close()
        thread.join(timeout=10)
    (order,) = store.open("order", "o1").all()
    assert_caused_by(invoices[0], order)
    (stored,) = store.open("invoice", "inv-o1").all()
    assert dict(stored.metadata) == dict(invoices[0].metadata)


def test_caller_given_keys_win_over_the_automatic_ones(any_storage: AnyStorage) -> None:
    store = Store(any_storage, events=ORDER_EVENTS)
    (order,) = [write_order(store)]
    with handling(order):
        store.open("invoice", "i1").write(
            InvoiceIssued(order_id="o1"), metadata={"correlation_id": "mine", "k": "v"}
        )
    (invoice,) = store.open("invoice", "i1").all()
    assert dict(invoice.metadata) == {
        "causation_id": order.store_event_id, "correlation_id": "mine", "k": "v"
    }


def write_order(store: Store) -> Event:
    store.open("order", "o1").write(OrderPlaced(amount=1))
    return next(store.open("order", "o1").all())


@pytest.fixture
def delivery(fast_storage: RedisStorage, broker: dramatiq.Broker) -> Iterator[Delivery]:
    made = Delivery(fast_storage, broker, events=ORDER_EVENTS)
    yield made
    made.stop()


def test_a_handler_write_records_its_cause_on_the_dramatiq_bus(delivery: Delivery) -> None:
    invoices: list[Event] = []
    invoicer(delivery.store, invoices)
    delivery.start_store()
    delivery.start_worker()
    delivery.store.open("order", "o1").write(OrderPlaced(amount=5))
    wait_for(lambda: len(invoices) == 1, "the invoice")
    (order,) = delivery.store.open("order", "o1").all()
    assert_caused_by(invoices[0], order)
