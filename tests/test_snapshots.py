"""Snapshots (issue 21): an entity's state after one of its events, kept beside the entity,
never delivered to subscribers; used only when taken with the state class's current
`snapshot_version`; refused after the entity's head. On every storage, both halves."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import pytest
from apps.delivery_kit import Delivery
from conftest import ACCOUNT_EVENTS, Deposited, Opened
from halves import AnyStore
from kit import wait_for, write_count
from pydantic import BaseModel

from es_workers import (
    Event,
    InMemoryStorage,
    RedisStorage,
    Snapshot,
    SnapshotError,
    Store,
)


class Balance(BaseModel):
    owner: str = ""
    amount: int = 0


class Audit(BaseModel):
    snapshot_version: ClassVar[int] = 3
    events: int = 0


def balance_of(state: Balance | None, event: Event) -> Balance:
    state = state or Balance()
    if isinstance(event.content, Opened):
        return Balance(owner=event.content.owner, amount=state.amount)
    if isinstance(event.content, Deposited):
        return Balance(owner=state.owner, amount=state.amount + event.content.amount)
    return state


def project_all(store: AnyStore, entity_id: str) -> Balance | None:
    state = None
    for event in store.read("account", entity_id):
        state = balance_of(state, event)
    return state


def write(store: AnyStore, entity_id: str, count: int) -> int:
    """Appends `count` account events at the head (an Opened first); returns the head."""
    head = 0
    for event in store.read("account", entity_id):
        head = event.event_number
    contents = [Opened(owner=entity_id) if head + i == 0 else Deposited(amount=head + i)
                for i in range(count)]
    with store.open_from("account", entity_id, head) as stream:
        list(stream.all())
        stream.write(*contents)
        return int(stream.position)


def test_a_snapshot_is_the_state_after_its_event_and_the_rest_is_read_after_it(
        half_store: AnyStore) -> None:
    write(half_store, "a", 5)
    state = project_all(half_store, "a")
    assert state is not None
    half_store.save_snapshot("account", "a", state, event_number=5)
    write(half_store, "a", 3)

    found = half_store.load_snapshot("account", "a", Balance)

    assert isinstance(found, Snapshot)
    assert (found.state, found.event_number) == (state, 5)
    fifth = next(e for e in half_store.read("account", "a") if e.event_number == 5)
    assert found.event_time == fifth.event_time
    # The seed's pattern: open after the snapshot, project the rest, write.
    with half_store.open_from("account", "a", found.event_number) as stream:
        rest = list(stream.all())
        assert [e.event_number for e in rest] == [6, 7, 8]
        projected = found.state
        for event in rest:
            projected = balance_of(projected, event)
        stream.write(Deposited(amount=1))
    assert balance_of(projected, Event("a", "account", 9, found.event_time,
                                       Deposited(amount=1), "", "")) == project_all(half_store, "a")


def test_no_snapshot_reads_as_none(half_store: AnyStore) -> None:
    assert half_store.load_snapshot("account", "nobody", Balance) is None
    write(half_store, "a", 2)
    assert half_store.load_snapshot("account", "a", Balance) is None


def test_a_snapshot_of_another_version_is_not_used(half_store: AnyStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write(half_store, "a", 3)
    half_store.save_snapshot("account", "a", Audit(events=3), event_number=3)
    found = half_store.load_snapshot("account", "a", Audit)
    assert found is not None and found.state == Audit(events=3)

    monkeypatch.setattr(Audit, "snapshot_version", 4)  # the state class changed meaning
    assert half_store.load_snapshot("account", "a", Audit) is None
    half_store.save_snapshot("account", "a", Audit(events=2), event_number=2)
    found = half_store.load_snapshot("account", "a", Audit)
    assert found is not None and (found.state, found.event_number) == (Audit(events=2), 2)


def test_each_state_class_has_its_own_snapshot_and_the_newest_is_kept(
        half_store: AnyStore) -> None:
    write(half_store, "a", 6)
    half_store.save_snapshot("account", "a", Balance(owner="a", amount=9), event_number=5)
    half_store.save_snapshot("account", "a", Balance(owner="a", amount=1), event_number=2)
    half_store.save_snapshot("account", "a", Audit(events=6), event_number=6)

    balance = half_store.load_snapshot("account", "a", Balance)
    audit = half_store.load_snapshot("account", "a", Audit)
    assert balance is not None and (balance.state.amount, balance.event_number) == (9, 5)
    assert audit is not None and audit.event_number == 6


def test_a_snapshot_beyond_the_head_is_refused_and_nothing_is_kept(
        half_store: AnyStore) -> None:
    with pytest.raises(SnapshotError, match="account 'new' has events up to 0"):
        half_store.save_snapshot("account", "new", Balance(), event_number=1)
    write(half_store, "a", 2)
    with pytest.raises(SnapshotError, match=r"up to 2.*after event 3"):
        half_store.save_snapshot("account", "a", Balance(), event_number=3)
    with pytest.raises(SnapshotError, match="event_number must be an int >= 1"):
        half_store.save_snapshot("account", "a", Balance(), event_number=0)
    with pytest.raises(SnapshotError, match="pydantic model"):
        half_store.save_snapshot("account", "a", {"amount": 1},  # type: ignore[arg-type]
                                 event_number=1)
    assert half_store.load_snapshot("account", "a", Balance) is None
    assert half_store.load_snapshot("account", "new", Balance) is None


def test_snapshots_are_not_events(half_store: AnyStore) -> None:
    write(half_store, "a", 3)
    before = list(half_store.read("account", "a"))
    half_store.save_snapshot("account", "a", Balance(owner="a"), event_number=3)
    assert list(half_store.read("account", "a")) == before
    assert half_store.entity_ids("account") == (["a"], None)
    assert write(half_store, "a", 1) == 4  # the numbering goes on as it was


def test_saved_snapshots_never_reach_subscribers() -> None:
    """On the in-memory bus (handed every stored event), and through read_all."""
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    seen: list[int] = []
    store.subscribe("account", "seen", lambda event: seen.append(event.event_number))
    runner = threading.Thread(target=store.start, daemon=True)
    runner.start()
    try:
        write_count(store, "a", 2)
        store.save_snapshot("account", "a", Balance(owner="a"), event_number=2)
        write_count(store, "a", 1)
        wait_for(lambda: len(seen) == 3, "three events handled")
    finally:
        store.close()
        runner.join(timeout=10)
    assert seen == [1, 2, 3]
    assert [e.event_number for e in store.read_all()] == [1, 2, 3]


def test_snapshot_every_saves_one_after_every_nth_event_in_memory() -> None:
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    subscriber_id = store.snapshot_every("account", 3, Balance, balance_of)
    assert subscriber_id == "snapshot_Balance"
    runner = threading.Thread(target=store.start, daemon=True)
    runner.start()
    try:
        write_count(store, "a", 7)

        def snapshot_at_6() -> bool:
            found = store.load_snapshot("account", "a", Balance)
            return found is not None and found.event_number == 6

        wait_for(snapshot_at_6, "the snapshot after event 6")
    finally:
        store.close()
        runner.join(timeout=10)
    found = store.load_snapshot("account", "a", Balance)
    assert found is not None
    expected = None
    for event in store.read("account", "a"):
        if event.event_number <= 6:
            expected = balance_of(expected, event)
    assert found.state == expected


def test_snapshot_every_runs_as_a_dramatiq_subscriber(fast_storage: RedisStorage,
                                                      broker: Any) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    delivery.store.snapshot_every("account", 2, Balance, balance_of, subscriber_id="snaps")
    delivery.start_worker()
    delivery.start_publisher()
    store = delivery.store
    try:
        write_count(store, "a", 3)
        write_count(store, "a", 2)
        store.wait_for("account", "a", 5, subscriber_ids=["snaps"], timeout=30)
    finally:
        delivery.stop()
    found = store.load_snapshot("account", "a", Balance)
    assert found is not None and found.event_number == 4
    expected = None
    for event in store.read("account", "a"):
        if event.event_number <= 4:
            expected = balance_of(expected, event)
    assert found.state == expected
