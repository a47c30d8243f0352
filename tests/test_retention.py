"""Retention (issue 21, guarantee 12): `truncate_before` stops keeping an entity's oldest
events. Reading from before the first kept event raises TruncatedError naming it, never a
silent partial history; from there on reads are normal; numbering and the optimistic check
go on as before. On every storage, both halves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta

import dramatiq
import pytest
from apps.delivery_kit import FAST_PUBLISHER, Delivery, Recorder
from conftest import ACCOUNT_EVENTS, Deposited, Opened
from halves import AnyStore
from kit import wait_for
from pydantic import BaseModel

from es_workers import (
    ConcurrencyError,
    EntityDeleted,
    EntityTombstoned,
    RedisStorage,
    Retention,
    Store,
    StreamDeletedError,
    TruncatedError,
    admin,
)
from es_workers.admin import Footprint
from es_workers.removal import REMOVED_TYPE
from es_workers.retention import KeepBound, Scavenged


class Balance(BaseModel):
    amount: int = 0


def append(store: AnyStore, entity_id: str, head: int, count: int) -> int:
    """Appends `count` account events after `head` (an Opened first); returns the head."""
    contents = [Opened(owner=entity_id) if head + i == 0 else Deposited(amount=head + i)
                for i in range(count)]
    with store.open_from("account", entity_id, head) as stream:
        list(stream.all())
        stream.write(*contents)
        return int(stream.position)


def numbers(store: AnyStore, entity_id: str, after: int) -> list[int]:
    return [e.event_number for e in store.read("account", entity_id, after)]


def test_reading_before_the_first_kept_event_raises_naming_it(half_store: AnyStore) -> None:
    append(half_store, "a", 0, 5)
    assert half_store.truncate_before("account", "a", 3) == 3

    for after in (0, 1):
        with pytest.raises(TruncatedError, match=r"account 'a' was truncated: its first kept "
                                                 r"event is 3; open it from event 2") as raised:
            numbers(half_store, "a", after)
        assert raised.value.first_kept_event == 3 and raised.value.first_kept is None
    with half_store.open("account", "a") as stream, pytest.raises(TruncatedError):
        list(stream.all())
    assert numbers(half_store, "a", 2) == [3, 4, 5]
    assert numbers(half_store, "a", 3) == [4, 5]


def test_numbering_and_the_optimistic_check_go_on_after_a_truncation(
        half_store: AnyStore) -> None:
    append(half_store, "a", 0, 5)
    half_store.truncate_before("account", "a", 4)

    assert append(half_store, "a", 5, 1) == 6
    assert numbers(half_store, "a", 3) == [4, 5, 6]
    with half_store.open_from("account", "a", 3) as first, \
            half_store.open_from("account", "a", 3) as second:
        list(first.all())
        list(second.all())
        first.write(Deposited(amount=1))
        with pytest.raises(ConcurrencyError):
            second.write(Deposited(amount=2))
    with half_store.open("account", "a") as blind, pytest.raises(ConcurrencyError):
        blind.write(Opened(owner="again"))  # the head is 7, not 0
    assert numbers(half_store, "a", 3) == [4, 5, 6, 7]
    assert half_store.entity_ids("account") == (["a"], None)


def test_a_truncation_never_moves_back_nor_past_the_head(half_store: AnyStore) -> None:
    append(half_store, "a", 0, 3)
    assert half_store.truncate_before("account", "a", 3) == 3
    assert half_store.truncate_before("account", "a", 2) == 3
    with pytest.raises(ValueError, match="account 'a' has events up to 3: it cannot be "
                                         "truncated before event 5"):
        half_store.truncate_before("account", "a", 5)
    with pytest.raises(ValueError, match="event_number must be an int >= 1"):
        half_store.truncate_before("account", "a", 0)
    assert half_store.truncate_before("account", "a", 4) == 4  # keeps none of them
    assert numbers(half_store, "a", 3) == []
    with pytest.raises(TruncatedError):
        numbers(half_store, "a", 2)
    assert append(half_store, "a", 3, 1) == 4
    assert numbers(half_store, "a", 3) == [4]


def test_a_snapshot_before_the_first_kept_event_is_not_used(half_store: AnyStore) -> None:
    append(half_store, "a", 0, 6)
    half_store.save_snapshot("account", "a", Balance(amount=2), event_number=2)
    half_store.truncate_before("account", "a", 4)

    assert half_store.load_snapshot("account", "a", Balance) is None  # open_from(2) fails
    with pytest.raises(ValueError, match="no longer holds event 2"):
        half_store.save_snapshot("account", "a", Balance(amount=2), event_number=2)
    half_store.save_snapshot("account", "a", Balance(amount=3), event_number=3)
    found = half_store.load_snapshot("account", "a", Balance)
    assert found is not None and found.event_number == 3
    assert numbers(half_store, "a", found.event_number) == [4, 5, 6]


def test_retention_is_checked_when_the_store_is_built() -> None:
    from es_workers import InMemoryStorage

    limits = Retention(max_count=1000, max_age=timedelta(days=90))
    store = Store(InMemoryStorage(), retention={"session": limits})
    assert store.retention == {"session": limits}
    with pytest.raises(ValueError, match="max_count must be an int >= 1"):
        Retention(max_count=0)
    with pytest.raises(ValueError, match="max_age must be a positive timedelta"):
        Retention(max_age=timedelta(0))
    with pytest.raises(ValueError, match="must be a Retention"):
        Store(InMemoryStorage(), retention={"session": 1000})  # type: ignore[dict-item]


# -- The scavenger (guarantee 12: nothing removed that someone still needs) ---------------


def test_the_scavenger_removes_what_a_truncation_allows_and_reads_stay_whole(
        make_any_store: Callable[..., Store]) -> None:
    store = make_any_store()
    append(store, "a", 0, 6)
    append(store, "b", 0, 2)
    first_id = next(iter(store.read("account", "a"))).store_entity_id
    log_before = [(e.entity_id, e.event_number) for e in store.read_all()]
    store.truncate_before("account", "a", 5)

    done = store.scavenge()

    assert (done.entities, done.events) == (1, 4) and done.bytes > 4 * 20
    assert store.scavenge() == Scavenged()  # nothing left to remove
    with pytest.raises(TruncatedError) as raised:
        numbers(store, "a", 0)
    assert raised.value.first_kept_event == 5
    assert numbers(store, "a", 4) == [5, 6]
    assert append(store, "a", 6, 1) == 7
    assert {e.store_entity_id for e in store.read("account", "a", 4)} == {first_id}
    # The log leaves out the removed events, and only them.
    assert [(e.entity_id, e.event_number) for e in store.read_all()] == [
        item for item in log_before if item[0] != "a" or item[1] >= 5] + [("a", 7)]
    assert numbers(store, "b", 0) == [1, 2]


def test_the_scavenger_applies_retention_limits(make_any_store: Callable[..., Store]) -> None:
    store = make_any_store(retention={"account": Retention(max_count=3)})
    append(store, "a", 0, 10)
    append(store, "b", 0, 2)

    done = store.scavenge()

    assert (done.entities, done.events) == (1, 7)
    with pytest.raises(TruncatedError, match="first kept event is 8"):
        numbers(store, "a", 6)
    assert numbers(store, "a", 7) == [8, 9, 10]
    assert numbers(store, "b", 0) == [1, 2]

    aged = make_any_store(retention={"account": Retention(max_age=timedelta(microseconds=1))})
    assert aged.scavenge().events == 3  # a's 8, 9 and b's 1: the newest of each is kept
    assert numbers(store, "a", 9) == [10] and numbers(store, "b", 1) == [2]


def test_the_scavenger_never_removes_an_event_a_subscriber_has_not_handled(
        fast_storage: RedisStorage, broker: dramatiq.Broker) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    seen = Recorder()
    delivery.store.subscribe("account", "seen", seen)
    store = delivery.store
    try:
        append(store, "a", 0, 6)  # nothing relays it yet: "seen" has handled none
        store.truncate_before("account", "a", 5)
        assert store.scavenge() == Scavenged()
        assert numbers(store, "a", 4) == [5, 6]

        delivery.start_worker()
        delivery.start_publisher()
        store.wait_for("account", "a", 6, timeout=30)
        assert [n for _, n in seen.calls] == [1, 2, 3, 4, 5, 6]  # every event, in order
        assert store.scavenge().events == 4
    finally:
        delivery.stop()


def test_a_subscriber_added_after_the_scavenger_ran_starts_at_the_first_kept_event(
        fast_storage: RedisStorage, broker: dramatiq.Broker) -> None:
    store = Store(fast_storage, events=ACCOUNT_EVENTS)
    append(store, "a", 0, 6)
    store.truncate_before("account", "a", 5)
    assert store.scavenge().events == 4  # no subscriber yet

    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    late = Recorder()
    delivery.store.subscribe("account", "late", late)
    delivery.start_worker()
    delivery.start_publisher()
    try:
        append(delivery.store, "a", 6, 1)
        delivery.store.wait_for("account", "a", 7, timeout=30)
        missed = {sub.subscriber_id: sub.missed_events
                  for sub in admin.status(delivery.store).subscribers}
    finally:
        delivery.stop()
    assert [n for _, n in late.calls] == [5, 6, 7]
    assert missed == {"late": 4}  # events 1-4: removed before it was added


def test_the_publisher_scavenges_every_interval(fast_storage: RedisStorage,
                                                broker: dramatiq.Broker) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    fast_storage.retain("account", Retention(max_count=2))
    seen = Recorder()
    delivery.store.subscribe("account", "seen", seen)
    delivery.start_worker()
    delivery.start_publisher(replace(FAST_PUBLISHER, scavenge_interval_ms=50))
    stream = fast_storage.keys.stream("account", "a")
    try:
        append(delivery.store, "a", 0, 5)
        wait_for(lambda: fast_storage.client.xlen(stream) == 2, "events 1-3 removed")
    finally:
        delivery.stop()
    assert [n for _, n in seen.calls] == [1, 2, 3, 4, 5]  # each handled before removed
    assert numbers(delivery.store, "a", 3) == [4, 5]


def test_a_subscriber_behind_a_truncation_still_handles_every_stored_event(
        fast_storage: RedisStorage, broker: dramatiq.Broker) -> None:
    """More than one delivery page (200 events) behind: it reads on past the first page."""
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    seen = Recorder()
    delivery.store.subscribe("account", "seen", seen)
    store = delivery.store
    try:
        append(store, "a", 0, 250)
        store.truncate_before("account", "a", 240)
        delivery.start_worker()
        delivery.start_publisher()
        store.wait_for("account", "a", 250, timeout=30)
    finally:
        delivery.stop()
    assert [n for _, n in seen.calls] == list(range(1, 251))


# -- Tombstones ------------------------------------------------------------------------------


def test_a_tombstoned_entity_is_gone_for_good(half_store: AnyStore) -> None:
    append(half_store, "a", 0, 3)
    append(half_store, "b", 0, 1)
    half_store.save_snapshot("account", "a", Balance(amount=3), event_number=3)

    half_store.tombstone("account", "a")
    half_store.tombstone("account", "a")  # idempotent

    with pytest.raises(StreamDeletedError, match="account 'a' was tombstoned"):
        numbers(half_store, "a", 0)
    with pytest.raises(StreamDeletedError):
        numbers(half_store, "a", 3)
    with half_store.open_from("account", "a", 3) as stream, pytest.raises(StreamDeletedError):
        list(stream.all())
    with half_store.open("account", "a") as blind, pytest.raises(StreamDeletedError):
        blind.write(Opened(owner="again"))  # refused where it is appended
    assert half_store.entity_ids("account") == (["b"], None)
    assert half_store.load_snapshot("account", "a", Balance) is None
    with pytest.raises(StreamDeletedError):
        half_store.save_snapshot("account", "a", Balance(), event_number=3)
    half_store.tombstone("account", "never-written")
    with half_store.open("account", "never-written") as new, pytest.raises(StreamDeletedError):
        new.write(Opened(owner="x"))
    assert numbers(half_store, "b", 0) == [1]


def test_a_tombstoned_entity_is_scavenged_once_subscribers_handled_it(
        make_any_store: Callable[..., Store]) -> None:
    store = make_any_store()
    append(store, "a", 0, 3)
    store.tombstone("account", "a")
    assert (store.scavenge().events, store.scavenge().events) == (3, 0)
    with pytest.raises(StreamDeletedError):
        numbers(store, "a", 0)
    # the log leaves out the removed events
    assert list(store.read_all(entity_types=["account"])) == []


# -- Soft delete -----------------------------------------------------------------------------


def test_a_deleted_entity_reads_empty_and_a_later_write_starts_it_again_after_its_numbers(
        half_store: AnyStore) -> None:
    append(half_store, "a", 0, 3)
    append(half_store, "b", 0, 1)
    half_store.save_snapshot("account", "a", Balance(amount=3), event_number=3)
    first = next(iter(half_store.read("account", "a"))).store_entity_id

    half_store.delete("account", "a")

    assert numbers(half_store, "a", 0) == numbers(half_store, "a", 2) == []
    assert numbers(half_store, "a", 3) == []
    assert half_store.entity_ids("account") == (["b"], None)
    assert half_store.load_snapshot("account", "a", Balance) is None
    with half_store.open("account", "a") as blind, pytest.raises(ConcurrencyError):
        blind.write(Deposited(amount=1))  # not read: event 1 is taken
    with half_store.open("account", "a") as stream:
        assert list(stream.all()) == [] and stream.position == 3
        stream.write(Deposited(amount=4), Deposited(amount=5))
    events = list(half_store.read("account", "a"))
    assert [e.event_number for e in events] == [4, 5]
    assert {e.store_entity_id for e in events} == {first}  # the same entity, again
    assert sorted(half_store.entity_ids("account")[0]) == ["a", "b"]
    assert append(half_store, "a", 5, 1) == 6  # numbering and the check go on

    half_store.delete("account", "never-written")  # nothing to delete: nothing happens
    assert numbers(half_store, "never-written", 0) == []
    half_store.tombstone("account", "b")
    half_store.delete("account", "b")  # a tombstone stays a tombstone
    with pytest.raises(StreamDeletedError):
        numbers(half_store, "b", 0)


def test_a_deleted_entity_with_many_stored_events_reads_what_came_after(
        half_store: AnyStore) -> None:
    """More stored events than one read page (1,000): the read skips them all."""
    append(half_store, "a", 0, 1500)
    half_store.delete("account", "a")
    assert append(half_store, "a", 1500, 2) == 1502
    assert numbers(half_store, "a", 0) == [1501, 1502]


def test_deletes_and_tombstones_are_recorded_as_notices(half_store: AnyStore) -> None:
    append(half_store, "a", 0, 2)
    append(half_store, "b", 0, 1)
    half_store.delete("account", "a")
    half_store.delete("account", "never-written")  # nothing deleted: no notice
    half_store.tombstone("account", "b")
    half_store.tombstone("account", "b")  # idempotent: one notice

    notices = list(half_store.read(REMOVED_TYPE, "account"))
    assert [e.content for e in notices] == [EntityDeleted(entity_id="a", event_number=2),
                                            EntityTombstoned(entity_id="b", event_number=1)]


def test_a_subscriber_is_told_of_a_delete_and_the_events_go_once_every_one_handled_them(
        fast_storage: RedisStorage, broker: dramatiq.Broker) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    seen, told = Recorder(), Recorder()
    store = delivery.store
    store.subscribe("account", "seen", seen)
    store.subscribe(REMOVED_TYPE, "told", told)
    try:
        append(store, "a", 0, 3)
        store.delete("account", "a")
        assert store.scavenge() == Scavenged()  # "seen" has handled none of them yet

        delivery.start_worker()
        delivery.start_publisher()
        store.wait_for("account", "a", 3, timeout=30)
        store.wait_for(REMOVED_TYPE, "account", 1, timeout=30)
        assert store.scavenge().events == 3
    finally:
        delivery.stop()
    assert [n for _, n in seen.calls] == [1, 2, 3]
    assert told.calls == [("account", 1)]
    assert numbers(store, "a", 0) == []
    assert append(store, "a", 3, 1) == 4 and numbers(store, "a", 0) == [4]


def footprints(store: Store) -> dict[str, Footprint]:
    return {found.entity_type: found for found in admin.status(store).footprints}


def test_status_estimates_memory_per_entity_type_and_what_a_scavenge_would_free(
        storage: RedisStorage, backend: str) -> None:
    store = Store(storage, events=ACCOUNT_EVENTS, retention={"account": Retention(max_count=2)})
    for entity_id in ("a", "b", "c", "d", "e"):
        append(store, entity_id, 0, 10)
    store.delete("account", "e")

    before = footprints(store)["account"]
    assert (before.entity_type, before.entities, before.removals) == ("account", 5, 1)
    assert (before.stored_events, before.removable_events) == (50, 42)  # 4 x 8 + e's 10
    if backend == "fakeredis":  # no MEMORY USAGE there: events only
        assert before.memory_bytes is before.removable_bytes is None
    else:
        assert before.memory_bytes and before.removable_bytes
        assert 0 < before.removable_bytes < before.memory_bytes

    assert store.scavenge().events == 42
    after = footprints(store)["account"]
    assert (after.stored_events, after.removable_events) == (8, 0)
    if backend != "fakeredis":
        assert after.memory_bytes and before.memory_bytes
        assert after.memory_bytes < before.memory_bytes


class Unconfirmed:
    """An archive that has confirmed each entity's events before `confirmed[entity_id]`."""

    def __init__(self, confirmed: dict[str, int]) -> None:
        self.confirmed = confirmed

    def first_needed(self, entity_type: str, entity_ids: Sequence[str]) -> list[int]:
        return [self.confirmed.get(entity_id, 1) for entity_id in entity_ids]


def test_the_scavenger_keeps_what_a_keep_bound_still_needs(storage: RedisStorage) -> None:
    """The port an archive holds the scavenger back with (guarantee 12)."""
    store = Store(storage, events=ACCOUNT_EVENTS)
    append(store, "a", 0, 6)
    append(store, "b", 0, 6)
    store.truncate_before("account", "a", 6)
    store.truncate_before("account", "b", 6)
    archive = Unconfirmed({"a": 3})  # a: 1-2 confirmed; b: none
    assert isinstance(archive, KeepBound)
    storage.keep_bounds.append(archive)

    assert store.scavenge().events == 2  # a's 1 and 2
    archive.confirmed.update(a=6, b=4)
    assert store.scavenge().events == 3 + 3  # a's 3-5, b's 1-3
    assert [e.event_number for e in store.read("account", "b", 5)] == [6]


def test_the_scavenger_removes_in_steps_of_its_batch(storage: RedisStorage) -> None:
    """Five entities with 17 events each to remove, 3 per XTRIM, 3 entities per scan."""
    store = Store(storage, events=ACCOUNT_EVENTS)
    for n in range(5):
        append(store, f"e{n}", 0, 20)
        store.truncate_before("account", f"e{n}", 18)

    done = storage.scavenge({}, batch=3)

    assert (done.entities, done.events) == (5, 5 * 17)
    for n in range(5):
        assert numbers(store, f"e{n}", 17) == [18, 19, 20]
        assert storage.client.xlen(storage.keys.stream("account", f"e{n}")) == 3
    assert storage.scavenge({}, batch=3) == Scavenged()
