"""The Storage contract every storage keeps (the Go library's Storage interface): writes of a
batch are all or nothing, a retried write does not duplicate, entity IDs page in creation
order. Every test runs on RedisStorage (fakeredis, real Redis) and on InMemoryStorage."""

from __future__ import annotations

import pytest
from conftest import ALL_STORAGES, Deposited, Opened, events_of

from es_workers import (
    ConcurrencyError,
    Content,
    EventTooLargeError,
    InMemoryStorage,
    RedisStorage,
    Store,
)

pytestmark = ALL_STORAGES  # and on the async storages, through BlockingStorage

AnyStorage = RedisStorage | InMemoryStorage


def dep(amount: int) -> Deposited:
    return Deposited(amount=amount)


@pytest.fixture
def storage_(any_storage: AnyStorage) -> AnyStorage:
    any_storage.register("account", Opened, Deposited)
    any_storage.register("card", Opened)
    return any_storage


def read(storage: AnyStorage, entity_id: str, after: int = 0) -> list[tuple[int, Content]]:
    return [(e.event_number, e.content) for e in storage.read("account", entity_id, after)]


def test_read_is_exclusive_of_the_start_number(storage_: AnyStorage) -> None:
    storage_.write("account", events_of("a1", Opened(owner="a"), *map(dep, range(4))))

    assert [n for n, _ in read(storage_, "a1")] == [1, 2, 3, 4, 5]
    assert [n for n, _ in read(storage_, "a1", 3)] == [4, 5]
    assert read(storage_, "a1", 5) == []


def test_a_batch_that_conflicts_writes_nothing(storage_: AnyStorage) -> None:
    storage_.write("account", events_of("a1", Opened(owner="a"), dep(1)))
    batch = events_of("a1", dep(2), dep(3), dep(4), after=1)  # 2 is taken

    with pytest.raises(ConcurrencyError) as caught:
        storage_.write("account", batch)

    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert read(storage_, "a1") == [(1, Opened(owner="a")), (2, dep(1))]


def test_a_batch_beyond_the_head_writes_nothing(storage_: AnyStorage) -> None:
    storage_.write("account", events_of("a1", Opened(owner="a")))

    with pytest.raises(ConcurrencyError) as caught:
        storage_.write("account", events_of("a1", dep(2), dep(3), after=3))

    assert (caught.value.expected, caught.value.actual) == (3, 1)
    assert read(storage_, "a1") == [(1, Opened(owner="a"))]


def test_a_batch_of_events_that_are_not_consecutive_or_of_two_entities_is_refused(
    storage_: AnyStorage,
) -> None:
    gap = events_of("a1", Opened(owner="a"), dep(1), dep(2))
    del gap[1]
    mixed = events_of("a1", Opened(owner="a")) + events_of("b1", dep(1), after=1)

    for batch in (gap, mixed):
        with pytest.raises(ValueError):
            storage_.write("account", batch)

    assert read(storage_, "a1") == []
    assert read(storage_, "b1") == []


def test_writing_the_same_events_twice_stores_them_once(storage_: AnyStorage) -> None:
    batch = events_of("a1", Opened(owner="a"), dep(1))

    storage_.write("account", batch)
    storage_.write("account", batch)  # a retry: same store_event_ids, same numbers

    stored = list(storage_.read("account", "a1"))
    assert [(e.event_number, e.store_event_id) for e in stored] == [
        (1, batch[0].store_event_id),
        (2, batch[1].store_event_id),
    ]
    assert storage_.entity_ids("account") == (["a1"], None)


def test_a_retry_succeeds_after_later_events_were_appended(storage_: AnyStorage) -> None:
    first = events_of("a1", Opened(owner="a"), dep(1))
    storage_.write("account", first)
    storage_.write("account", events_of("a1", dep(2), after=2))

    storage_.write("account", first)  # the reply of the first write was lost

    assert [n for n, _ in read(storage_, "a1")] == [1, 2, 3]


def test_other_events_at_numbers_taken_still_conflict(storage_: AnyStorage) -> None:
    storage_.write("account", events_of("a1", Opened(owner="a"), dep(1)))

    for batch in (
        events_of("a1", Opened(owner="a"), dep(1)),  # same contents, other store_event_ids
        events_of("a1", dep(1), after=1),
    ):
        with pytest.raises(ConcurrencyError):
            storage_.write("account", batch)

    assert [n for n, _ in read(storage_, "a1")] == [1, 2]


def test_entity_ids_are_paged_in_creation_order_exactly_once(storage_: AnyStorage) -> None:
    created = [f"acc-{n:02d}-{'z' if n % 3 else 'a'}" for n in range(40)]  # not sorted by ID
    for number, entity_id in enumerate(created):
        storage_.write("account", events_of(entity_id, Opened(owner=entity_id)))
        if number % 5 == 0:
            card = events_of(f"card-{number}", Opened(owner="x"), entity_type="card")
            storage_.write("card", card)
        if number % 4 == 0:  # later events do not move an entity in the order
            storage_.write("account", events_of(created[0], dep(number), after=1 + number // 4))
    if isinstance(storage_, RedisStorage):  # the 40 entities are spread over partitions
        assert len({storage_.keys.partition("account", i) for i in created}) >= 8

    pages: list[list[str]] = []
    token: str | None = None
    while True:
        page, token = storage_.entity_ids("account", after=token, limit=7)
        pages.append(page)
        if token is None:
            break

    assert [len(page) for page in pages] == [7, 7, 7, 7, 7, 5]
    assert [entity_id for page in pages for entity_id in page] == created


@pytest.mark.parametrize("limit", [1, 2, 100])
def test_entity_ids_of_any_first_character_are_paged_exactly_once(
    storage_: AnyStorage, limit: int
) -> None:
    """IDs starting with characters whose UTF-8 bytes sort above a page bound built from
    text (U+00FF and beyond) are neither repeated nor looped over."""
    created = ["中文", "a1", "😀-smile", "ÿ-last-latin", "\u00fe-thorn", "z9", "\U0010ffff"]
    for entity_id in created:
        storage_.write("account", events_of(entity_id, Opened(owner="x")))

    listed: list[str] = []
    token: str | None = None
    for _ in range(len(created) + 1):  # one page too many means it never ends
        page, token = storage_.entity_ids("account", after=token, limit=limit)
        listed += page
        if token is None:
            break
    assert token is None, f"still paging after {len(listed)} IDs: {listed}"
    assert listed == created


def test_entity_ids_token_is_the_store_entity_id_of_the_last_entity_and_exclusive(
    storage_: AnyStorage,
) -> None:
    for entity_id in ("e1", "e2", "e3"):
        storage_.write("account", events_of(entity_id, Opened(owner=entity_id)))
    first_events = {e: next(iter(storage_.read("account", e))) for e in ("e1", "e2", "e3")}

    page, token = storage_.entity_ids("account", limit=2)
    assert page == ["e1", "e2"]
    assert token == first_events["e2"].store_entity_id

    assert storage_.entity_ids("account", after=token, limit=2) == (["e3"], None)
    assert storage_.entity_ids("account", after=first_events["e3"].store_entity_id) == ([], None)


def test_entity_ids_last_full_page_has_no_token(storage_: AnyStorage) -> None:
    for entity_id in ("e1", "e2"):
        storage_.write("account", events_of(entity_id, Opened(owner=entity_id)))

    assert storage_.entity_ids("account", limit=2) == (["e1", "e2"], None)
    assert storage_.entity_ids("account", limit=100) == (["e1", "e2"], None)


def test_entity_ids_exclude_other_entity_types_and_unknown_types_are_empty(
    storage_: AnyStorage,
) -> None:
    storage_.write("account", events_of("same-id", Opened(owner="a")))
    storage_.write("card", events_of("same-id", Opened(owner="c"), entity_type="card"))
    storage_.write("card", events_of("card-only", Opened(owner="c"), entity_type="card"))

    assert storage_.entity_ids("account") == (["same-id"], None)
    assert storage_.entity_ids("card") == (["same-id", "card-only"], None)
    assert storage_.entity_ids("nothing") == ([], None)


def test_entity_ids_refuses_a_limit_below_one(storage_: AnyStorage) -> None:
    storage_.write("account", events_of("a1", Opened(owner="a")))
    for limit in (0, -1):
        with pytest.raises(ValueError):
            storage_.entity_ids("account", limit=limit)


def test_a_conflicting_first_write_does_not_list_the_entity_twice(storage_: AnyStorage) -> None:
    storage_.write("account", events_of("a1", Opened(owner="a")))
    with pytest.raises(ConcurrencyError):
        storage_.write("account", events_of("a1", Opened(owner="b")))

    assert storage_.entity_ids("account") == (["a1"], None)


def test_an_event_over_the_size_limit_is_refused_and_nothing_of_the_write_is_stored(
    storage_: AnyStorage,
) -> None:
    limit = 1 << 20  # the default ES_MAX_EVENT_BYTES
    empty = len(Opened(owner="").model_dump_json().encode())
    at_limit = Opened(owner="x" * (limit - empty))
    over = Opened(owner="é" * ((limit - empty) // 2 + 1))  # 2 bytes each in UTF-8

    with pytest.raises(EventTooLargeError) as refused:
        storage_.write("account", events_of("acc-1", Opened(owner="ann"), over))

    size = len(over.model_dump_json().encode())
    assert size > limit  # in bytes, not characters
    assert (refused.value.event_number, refused.value.size, refused.value.limit) == (
        2, size, limit)
    assert "account 'acc-1' event 2 (Opened)" in str(refused.value)
    assert "ES_MAX_EVENT_BYTES" in str(refused.value) and "nothing was written" in str(
        refused.value)
    assert read(storage_, "acc-1") == []
    assert storage_.entity_ids("account") == ([], None)
    storage_.write("account", events_of("acc-1", at_limit))
    assert read(storage_, "acc-1") == [(1, at_limit)]


def test_metadata_counts_toward_the_size_limit(storage_: AnyStorage) -> None:
    empty = len(Opened(owner="").model_dump_json().encode())
    fits_alone = Opened(owner="x" * ((1 << 20) - empty - 10))
    with Store(storage_).open("account", "acc-1") as stream, pytest.raises(EventTooLargeError):
        stream.write(fits_alone, metadata={"note": "y" * 100})
    assert read(storage_, "acc-1") == []
