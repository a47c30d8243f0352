"""Stream semantics (the Go library's Stream): numbering, position, optimistic concurrency,
reading from a number, and the stream's life cycle. Every test runs on each Storage."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ALL_STORAGES, Deposited, Opened, Withdrawn

from es_workers import ConcurrencyError, EsError, Event, Store, StreamNotReadError
from es_workers.ids import new_ids

pytestmark = ALL_STORAGES  # and on the async storages, through BlockingStorage

MakeStore = Callable[..., Store]


def numbers(store: Store, entity_id: str = "a1") -> list[int]:
    return [event.event_number for event in store.open("account", entity_id).all()]


def contents(store: Store, entity_id: str = "a1") -> list[object]:
    return [event.content for event in store.open("account", entity_id).all()]


def test_first_write_appends_events_numbered_from_one(make_any_store: MakeStore) -> None:
    store = make_any_store()
    with store.open("account", "a1") as stream:
        stream.write(Opened(owner="ann"), Deposited(amount=5))

    assert numbers(store) == [1, 2]
    assert contents(store) == [Opened(owner="ann"), Deposited(amount=5)]


def test_each_write_appends_at_the_next_numbers(make_any_store: MakeStore) -> None:
    store = make_any_store()
    with store.open("account", "a1") as stream:
        stream.write(Opened(owner="ann"))
        stream.write(Deposited(amount=5), Deposited(amount=6))
        stream.write(Withdrawn(amount=1))

    assert numbers(store) == [1, 2, 3, 4]
    assert contents(store)[3] == Withdrawn(amount=1)


def test_position_starts_at_zero_and_follows_reads_and_writes(make_any_store: MakeStore) -> None:
    store = make_any_store()
    stream = store.open("account", "a1")
    assert stream.position == 0
    stream.write(Opened(owner="ann"), Deposited(amount=1))
    assert stream.position == 2

    reader = store.open("account", "a1")
    assert reader.position == 0
    iterator = reader.all()
    next(iterator)
    assert reader.position == 1
    next(iterator)
    assert reader.position == 2

    assert store.open_from("account", "a1", 1).position == 1


def test_position_is_unchanged_by_a_failed_write(make_any_store: MakeStore) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"))
    stale = store.open("account", "a1")

    with pytest.raises(ConcurrencyError):
        stale.write(Deposited(amount=1))

    assert stale.position == 0


def test_concurrent_writers_one_wins_other_gets_concurrency_error(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"))
    first, second = store.open("account", "a1"), store.open("account", "a1")
    list(first.all())
    list(second.all())

    first.write(Deposited(amount=1))
    with pytest.raises(ConcurrencyError) as caught:
        second.write(Deposited(amount=2), Deposited(amount=3))

    error = caught.value
    assert (error.entity_type, error.entity_id, error.expected, error.actual) == (
        "account",
        "a1",
        1,
        2,
    )
    assert isinstance(error, EsError)
    assert contents(store) == [Opened(owner="ann"), Deposited(amount=1)]


def test_write_at_a_number_already_written_conflicts_and_stores_nothing(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))

    with pytest.raises(ConcurrencyError) as caught:
        store.open("account", "a1").write(Opened(owner="bob"))  # blind write at 1

    assert (caught.value.expected, caught.value.actual) == (0, 2)
    assert contents(store) == [Opened(owner="ann"), Deposited(amount=1)]


def test_write_beyond_the_head_conflicts_and_stores_nothing(make_any_store: MakeStore) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))
    ahead = store.open_from("account", "a1", 5)
    assert list(ahead.all()) == []

    with pytest.raises(ConcurrencyError) as caught:
        ahead.write(Deposited(amount=9))  # would leave a gap at 3..5

    assert (caught.value.expected, caught.value.actual) == (5, 2)
    assert numbers(store) == [1, 2]


def test_a_stale_writer_succeeds_after_reading_what_it_missed(make_any_store: MakeStore) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"))
    stale = store.open("account", "a1")
    list(stale.all())
    with store.open("account", "a1") as other:
        list(other.all())
        other.write(Deposited(amount=1))

    with pytest.raises(ConcurrencyError) as caught:
        stale.write(Deposited(amount=2))
    retry = store.open_from("account", "a1", stale.position)
    assert [event.event_number for event in retry.all()] == [2]
    retry.write(Deposited(amount=2))

    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert contents(store) == [Opened(owner="ann"), Deposited(amount=1), Deposited(amount=2)]
    assert retry.position == 3


def test_open_from_reads_only_events_after_the_number(make_any_store: MakeStore) -> None:
    store = make_any_store()
    store.open("account", "a1").write(
        Opened(owner="ann"), Deposited(amount=1), Deposited(amount=2), Withdrawn(amount=3)
    )

    read = store.open_from("account", "a1", 2).all()

    assert [(e.event_number, e.content) for e in read] == [
        (3, Deposited(amount=2)),
        (4, Withdrawn(amount=3)),
    ]
    assert list(store.open_from("account", "a1", 4).all()) == []
    assert list(store.open_from("account", "a1", 9).all()) == []


def test_open_from_a_number_with_no_stored_entity_reads_nothing(make_any_store: MakeStore) -> None:
    store = make_any_store()
    assert list(store.open("account", "nobody").all()) == []
    assert list(store.open_from("account", "nobody", 3).all()) == []


def test_open_from_a_negative_number_is_refused(make_any_store: MakeStore) -> None:
    store = make_any_store()
    with pytest.raises(ValueError):
        store.open_from("account", "a1", -1)


def test_writing_after_open_from_without_reading_raises_stream_not_read(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))
    stream = store.open_from("account", "a1", 2)

    with pytest.raises(StreamNotReadError):
        stream.write(Deposited(amount=2))

    assert isinstance(StreamNotReadError("x"), EsError)
    assert numbers(store) == [1, 2]


def test_writing_after_open_from_and_a_partial_read_raises_stream_not_read(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1), Deposited(amount=2))
    partial = store.open_from("account", "a1", 1)
    assert next(partial.all()).event_number == 2  # event 3 not read yet

    with pytest.raises(StreamNotReadError):
        partial.write(Deposited(amount=3))

    assert numbers(store) == [1, 2, 3]


def test_writing_after_open_from_and_reading_appends_after_the_head(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))
    stream = store.open_from("account", "a1", 1)
    assert [event.event_number for event in stream.all()] == [2]

    stream.write(Withdrawn(amount=1))

    assert stream.position == 3
    assert contents(store)[-1] == Withdrawn(amount=1)


def test_all_called_again_reads_the_storage_again(make_any_store: MakeStore) -> None:
    """As in Go, where ranging the iterator again queries the storage again."""
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))
    stream = store.open("account", "a1")

    assert [event.event_number for event in stream.all()] == [1, 2]
    seen: list[int] = []
    stream.project(lambda event: seen.append(event.event_number))  # a second projection
    other = store.open("account", "a1")  # another writer appends meanwhile
    list(other.all())
    other.write(Deposited(amount=2))

    assert seen == [1, 2]
    assert [event.event_number for event in stream.all()] == [1, 2, 3]
    assert stream.position == 3


def test_a_second_read_of_a_stream_opened_from_n_starts_after_n_again(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1),
                                      Deposited(amount=2))
    stream = store.open_from("account", "a1", 1)

    assert [event.event_number for event in stream.all()] == [2, 3]
    assert [event.event_number for event in stream.all()] == [2, 3]
    stream.write(Withdrawn(amount=1))
    assert stream.position == 4


def test_project_hands_every_event_in_order_to_a_function_or_handle_object(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=3), Withdrawn(amount=1))

    seen: list[int] = []
    store.open("account", "a1").project(lambda event: seen.append(event.event_number))

    class Balance:
        def __init__(self) -> None:
            self.amount = 0

        def handle(self, event: Event) -> None:
            if isinstance(event.content, Deposited):
                self.amount += event.content.amount
            elif isinstance(event.content, Withdrawn):
                self.amount -= event.content.amount

    balance = Balance()
    store.project("account", "a1", balance)

    assert seen == [1, 2, 3]
    assert balance.amount == 2


def test_project_stops_at_the_first_handler_exception(make_any_store: MakeStore) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1), Deposited(amount=2))
    seen: list[int] = []

    def handler(event: Event) -> None:
        seen.append(event.event_number)
        if event.event_number == 2:
            raise RuntimeError("handler failed")

    stream = store.open("account", "a1")
    with pytest.raises(RuntimeError, match="handler failed"):
        stream.project(handler)
    with pytest.raises(RuntimeError, match="handler failed"):
        store.project("account", "a1", handler)

    assert seen == [1, 2, 1, 2]
    assert stream.position == 2


def test_project_refuses_a_handler_that_is_not_callable(make_any_store: MakeStore) -> None:
    store = make_any_store()
    with pytest.raises(TypeError):
        store.open("account", "a1").project(42)  # type: ignore[arg-type]


def test_context_manager_closes_the_stream(make_any_store: MakeStore) -> None:
    store = make_any_store()
    with store.open("account", "a1") as stream:
        stream.write(Opened(owner="ann"))

    with pytest.raises(EsError, match="closed"):
        stream.write(Deposited(amount=1))
    with pytest.raises(EsError, match="closed"):
        stream.all()
    closed = store.open("account", "a1")
    closed.close()
    with pytest.raises(EsError, match="closed"):
        closed.project(lambda event: None)
    assert numbers(store) == [1]


def test_writing_nothing_stores_nothing(make_any_store: MakeStore) -> None:
    store = make_any_store()
    stream = store.open("account", "a1")
    stream.write()
    assert stream.position == 0
    assert numbers(store) == []
    assert store.storage.entity_ids("account") == ([], None)


def test_events_carry_their_metadata(make_any_store: MakeStore) -> None:
    store = make_any_store()
    before = datetime.now(UTC)
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))
    stream = store.open_from("account", "a1", 0)
    list(stream.all())
    stream.write(Deposited(amount=2))
    after = datetime.now(UTC)

    events = list(store.open("account", "a1").all())

    assert [(e.entity_type, e.entity_id) for e in events] == [("account", "a1")] * 3
    for event in events:
        assert event.event_time.tzinfo is not None
        assert event.event_time.utcoffset() == timedelta(0)
        assert before - timedelta(milliseconds=1) <= event.event_time <= after
        assert uuid.UUID(event.store_event_id).version == 7
        assert event.store_entity_id == events[0].store_event_id
    assert len({event.store_event_id for event in events}) == 3
    assert events[0].store_event_id < events[1].store_event_id < events[2].store_event_id
    with pytest.raises(AttributeError):
        events[0].event_number = 5  # type: ignore[misc]  # events are frozen


def test_event_time_is_read_back_to_the_microsecond(make_any_store: MakeStore) -> None:
    store = make_any_store()
    when = datetime(2024, 2, 29, 23, 59, 58, 123457, tzinfo=UTC)
    event = Event(
        entity_id="a1",
        entity_type="account",
        event_number=1,
        event_time=when,
        content=Opened(owner="ann"),
        store_event_id=new_ids(1)[0],
        store_entity_id="",
    )
    store.storage.write("account", [event])

    (stored,) = store.open("account", "a1").all()

    assert stored.event_time == when
    assert stored.event_time.utcoffset() == timedelta(0)
    assert stored.store_event_id == stored.store_entity_id == event.store_event_id
