"""Event contents are the subscriber's own on every bus: a handler that changes what it was
handed (a field, or a list inside it) changes nothing another subscriber, or a later read,
sees. Users' Content classes keep working as they are (not frozen)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dramatiq
import pytest
from apps.delivery_kit import FAST_PUBLISHER, Delivery
from kit import wait_for
from pydantic import PrivateAttr, model_validator

from es_workers import Content, Event, InMemoryStorage, RedisStorage, Store


class Noted(Content):
    text: str
    tags: list[str]
    counts: dict[str, list[int]]


NOTE_EVENTS: dict[str, list[type[Content]]] = {"note": [Noted]}
ORIGINAL = Noted(text="hello", tags=["a"], counts={"x": [1]})


def subscribe_meddler_and_reader(store: Store) -> list[Noted]:
    """Two subscribers of notes: one changes every content it is handed, the other records
    what it is handed (after the first, on the in-memory bus)."""
    seen: list[Noted] = []

    @store.subscribe("note", "meddler")
    def meddle(event: Event) -> None:
        content = event.content
        assert isinstance(content, Noted)
        content.text = "changed"
        content.tags.append("meddled")
        content.counts["x"].append(99)

    @store.subscribe("note", "reader")
    def read(event: Event) -> None:
        assert isinstance(event.content, Noted)
        seen.append(event.content.model_copy(deep=True))

    return seen


def assert_untouched(store: Store, seen: list[Noted]) -> None:
    assert seen == [ORIGINAL]
    assert [e.content for e in store.read("note", "n1")] == [ORIGINAL]


def test_a_subscriber_changing_its_content_changes_nothing_for_others_on_the_in_memory_bus(
    any_storage: RedisStorage | InMemoryStorage,
) -> None:
    if isinstance(any_storage, RedisStorage):
        any_storage.publisher_options = FAST_PUBLISHER
    store = Store(any_storage, events=NOTE_EVENTS)
    seen = subscribe_meddler_and_reader(store)
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        store.open("note", "n1").write(ORIGINAL)
        wait_for(lambda: len(seen) == 1, "the reader to handle the note")
    finally:
        store.close()
        thread.join(timeout=10)
    assert_untouched(store, seen)


def test_events_written_to_the_in_memory_bus_are_not_changed_by_its_subscribers() -> None:
    store = Store(InMemoryStorage(), events=NOTE_EVENTS)
    seen = subscribe_meddler_and_reader(store)
    store.open("note", "n1").write(ORIGINAL)
    events = list(store.read("note", "n1"))

    store.bus.write("note", events)  # type: ignore[union-attr]

    assert seen == [ORIGINAL]
    assert [e.content for e in events] == [ORIGINAL]  # the caller's events too


@pytest.fixture
def delivery(fast_storage: RedisStorage, broker: dramatiq.Broker) -> Iterator[Delivery]:
    made = Delivery(fast_storage, broker, events=NOTE_EVENTS)
    yield made
    made.stop()


def test_a_subscriber_changing_its_content_changes_nothing_for_others_on_the_dramatiq_bus(
    delivery: Delivery,
) -> None:
    seen = subscribe_meddler_and_reader(delivery.store)
    delivery.start_store()
    delivery.start_worker()
    delivery.store.open("note", "n1").write(ORIGINAL)
    wait_for(lambda: len(seen) == 1, "the reader to handle the note")
    assert_untouched(delivery.store, seen)


class Total(Content):
    """A Content class as users write them: it sets a field in a validator, keeps a private
    attribute, and its instances are changed before they are written."""

    amounts: list[int]
    total: int = 0
    _checked: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _sum(self) -> Total:
        self.total = sum(self.amounts)
        return self


def test_users_content_classes_still_set_fields_and_are_handed_to_every_subscriber() -> None:
    store = Store(InMemoryStorage(), events={"cart": [Total]})
    handed: list[Total] = []
    for subscriber_id in ("first", "second"):
        store.subscribe("cart", subscriber_id, lambda event: handed.append(event.content))
    content = Total(amounts=[1, 2])
    content.amounts = [1, 2, 3]  # changed before it is written: allowed
    content._checked = True
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        store.open("cart", "c1").write(content)
        wait_for(lambda: len(handed) == 2, "both subscribers")
    finally:
        store.close()
        thread.join(timeout=10)
    assert [(c.amounts, c.total) for c in handed] == [([1, 2, 3], 6)] * 2
    assert handed[0] is not handed[1]
