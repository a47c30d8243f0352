"""Event upgrades (the Go library's EventUpgrade): chained in order, applied on read and on
what subscribers are handed, seeing only the events in flight. Runs on each Storage."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest
from conftest import ALL_STORAGES, Deposited, Opened, Withdrawn

from es_workers import Content, Event, Store

pytestmark = ALL_STORAGES  # and on the async storages, through BlockingStorage

MakeStore = Callable[..., Store]


class DepositedV1(Content):
    """An old shape of Deposited: cents as a string."""

    event_name = "DepositedV1"
    cents: str


def with_content(event: Event, content: Content) -> Event:
    return dataclasses.replace(event, content=content)


def plus_one(events: Iterator[Event]) -> Iterator[Event]:
    for event in events:
        if isinstance(event.content, Deposited):
            event = with_content(event, Deposited(amount=event.content.amount + 1))
        yield event


def times_ten(events: Iterator[Event]) -> Iterator[Event]:
    for event in events:
        if isinstance(event.content, Deposited):
            event = with_content(event, Deposited(amount=event.content.amount * 10))
        yield event


def amounts(store: Store, entity_id: str = "a1", after: int = 0) -> list[int]:
    return [
        e.content.amount
        for e in store.open_from("account", entity_id, after).all()
        if isinstance(e.content, Deposited)
    ]


def test_upgrades_are_chained_in_the_order_given(make_any_store: MakeStore) -> None:
    writer = make_any_store()
    writer.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1), Deposited(amount=2))

    first_plus_one = make_any_store(upgrades={"account": [plus_one, times_ten]})
    first_times_ten = make_any_store(upgrades={"account": [times_ten, plus_one]})

    assert amounts(writer) == [1, 2]
    assert amounts(first_plus_one) == [20, 30]
    assert amounts(first_times_ten) == [11, 21]


def test_an_upgrade_turns_an_old_event_shape_into_the_current_one(
    make_any_store: MakeStore,
) -> None:
    old = make_any_store(events={"account": [Opened, DepositedV1]})
    old.open("account", "a1").write(Opened(owner="a"), DepositedV1(cents="250"))

    def cents_to_amount(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event.content, DepositedV1):
                event = with_content(event, Deposited(amount=int(event.content.cents) // 100))
            yield event

    store = make_any_store(
        events={"account": [Opened, Deposited, DepositedV1]},
        upgrades={"account": [cents_to_amount]},
    )

    assert [e.content for e in store.open("account", "a1").all()] == [
        Opened(owner="a"),
        Deposited(amount=2),
    ]
    seen: list[Content] = []
    store.project("account", "a1", lambda e: seen.append(e.content))
    assert seen[1] == Deposited(amount=2)


def test_upgrades_see_only_the_events_in_flight_when_opened_from_a_number(
    make_any_store: MakeStore,
) -> None:
    seen_by_upgrade: list[int] = []

    def record(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            seen_by_upgrade.append(event.event_number)
            yield event

    store = make_any_store(upgrades={"account": [record]})
    store.open("account", "a1").write(Opened(owner="a"), *(Deposited(amount=n) for n in range(4)))
    seen_by_upgrade.clear()

    read = [e.event_number for e in store.open_from("account", "a1", 3).all()]

    assert read == [4, 5]
    assert seen_by_upgrade == [4, 5]


def test_upgrades_apply_to_what_subscribers_are_handed(make_any_store: MakeStore) -> None:
    store = make_any_store(upgrades={"account": [plus_one]})
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1), Deposited(amount=5))

    handed = [e.content for e in store.read("account", "a1", after=1)]

    assert handed == [Deposited(amount=2), Deposited(amount=6)]


def test_upgrades_apply_only_to_their_entity_type(make_any_store: MakeStore) -> None:
    store = make_any_store(
        events={"account": [Opened, Deposited], "card": [Opened, Deposited]},
        upgrades={"card": [times_ten]},
    )
    for entity_type in ("account", "card"):
        store.open(entity_type, "x").write(Deposited(amount=3))

    assert [e.content for e in store.open("account", "x").all()] == [Deposited(amount=3)]
    assert [e.content for e in store.open("card", "x").all()] == [Deposited(amount=30)]


def test_an_upgrade_that_drops_or_splits_events_does_not_move_the_write_position(
    make_any_store: MakeStore,
) -> None:
    def drop_withdrawals_split_opened(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event.content, Withdrawn):
                continue
            yield event
            if isinstance(event.content, Opened):
                yield with_content(event, Deposited(amount=0))

    store = make_any_store(upgrades={"account": [drop_withdrawals_split_opened]})
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=4), Withdrawn(amount=1))

    stream = store.open_from("account", "a1", 0)
    assert [type(e.content) for e in stream.all()] == [Opened, Deposited, Deposited]
    assert stream.position == 3  # the last stored event read, not the count seen
    stream.write(Deposited(amount=9))

    assert [e.event_number for e in make_any_store().open("account", "a1").all()] == [1, 2, 3, 4]


def test_an_upgrade_error_reaches_the_reader(make_any_store: MakeStore) -> None:
    def broken(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if event.event_number == 2:
                raise LookupError("upgrade cannot handle event 2")
            yield event

    store = make_any_store(upgrades={"account": [broken]})
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1))
    seen: list[int] = []

    with pytest.raises(LookupError, match="event 2"):
        store.project("account", "a1", lambda e: seen.append(e.event_number))
    with pytest.raises(LookupError, match="event 2"):
        list(store.read("account", "a1"))

    assert seen == [1]
