"""Retention (issue 21, guarantee 12): `truncate_before` stops keeping an entity's oldest
events. Reading from before the first kept event raises TruncatedError naming it, never a
silent partial history; from there on reads are normal; numbering and the optimistic check
go on as before. On every storage, both halves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import Deposited, Opened
from halves import AnyStore
from pydantic import BaseModel

from es_workers import ConcurrencyError, Retention, Store, TruncatedError


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
