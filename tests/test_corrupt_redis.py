"""Corrupt records in Redis, written with raw commands into an entity's stream key: reading
raises a DecodeError (CorruptEventError, UnknownEventError or InvalidPayloadError) that
names the key and the event number, on every way of reading, with replies as bytes and as
text, on both halves (`half`: Store on RedisStorage, AsyncStore on AsyncRedisStorage).
Writing behind a corrupt entry is refused with a CorruptEventError too, nothing written.
(tests/test_storage_redis.py covers the basic cases; these are the odder ones.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from apps.delivery_kit import Delivery, Recorder, stub_broker
from async_kit import BlockingStore
from conftest import Deposited, Opened, Withdrawn, client_beside
from kit import wait_for

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    Content,
    CorruptEventError,
    DecodeError,
    Event,
    InvalidPayloadError,
    RedisStorage,
    Store,
    UnknownEventError,
    admin,
)

GOOD_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
EVENTS: dict[str, list[type[Content]]] = {"account": [Opened, Deposited, Withdrawn]}
AnyStore = Store | BlockingStore


@pytest.fixture(params=[False, True], ids=["bytes", "text"])
def store(
    request: pytest.FixtureRequest, half: str, redis_client: redis.Redis, prefix: str
) -> Iterator[AnyStore]:
    """A Store or an AsyncStore (`half`) whose client (of the backend's server) replies in
    bytes, or (decode_responses) in text."""
    client = client_beside(redis_client, request, decode_responses=request.param,
                           use_asyncio=half == "async")
    made: AnyStore
    if half == "sync":
        made = Store(RedisStorage(client, prefix=prefix), events=EVENTS)
    else:
        made = BlockingStore(AsyncStore(AsyncRedisStorage(client, prefix=prefix),
                                        events=EVENTS))
    RAW[id(made)] = redis_client
    yield made
    del RAW[id(made)]
    if isinstance(made, BlockingStore):
        made.close()
    else:
        client.close()


RAW: dict[int, redis.Redis] = {}
"""The backend's own client (bytes) of each store of the `store` fixture: records are
written with it as a buggy or foreign writer would."""


@pytest.fixture
def sync_store(redis_client: redis.Redis, prefix: str) -> Iterator[Store]:
    """A Store on the backend's server (delivery runs on the sync half only)."""
    made = Store(RedisStorage(redis_client, prefix=prefix), events=EVENTS)
    RAW[id(made)] = redis_client
    yield made
    del RAW[id(made)]


def fields(name: str = "Deposited", data: bytes | str = '{"amount": 1}',
           time: str = "1700000000000000", event_id: str = GOOD_ID) -> dict[str, bytes | str]:
    return {"n": name, "d": data, "t": time, "e": event_id}


def raw(store: AnyStore) -> redis.Redis:
    return RAW[id(store)]


def key_of(store: AnyStore) -> str:
    if isinstance(store, BlockingStore):
        storage = store.async_store.storage
        assert isinstance(storage, AsyncRedisStorage)
        return store.run(storage.open()).stream("account", "a1")
    assert isinstance(store.storage, RedisStorage)
    return store.storage.keys.stream("account", "a1")


def add_raw(store: AnyStore, entry_id: str, values: dict[str, bytes | str]) -> str:
    """Appends a record to a1's stream as a buggy or foreign writer would, bypassing the
    append script (so heads, index and outbox know nothing of it)."""
    key = key_of(store)
    raw(store).xadd(key, values, id=entry_id)  # type: ignore[arg-type]
    return key


def storage_read(store: AnyStore, after: int = 0) -> Callable[[], list[Event]]:
    """Reading a1 from the store's storage itself."""
    if isinstance(store, Store):
        return lambda: list(store.storage.read("account", "a1", after))

    async def events() -> list[Event]:
        return [e async for e in store.async_store.storage.read("account", "a1", after)]

    return lambda: store.run(events())


def readers(store: AnyStore) -> dict[str, Callable[[], list[Event]]]:
    """Every way events are read: a stream, a projection, what subscribers are handed, and
    the storage itself."""
    def project() -> list[Event]:
        seen: list[Event] = []
        if isinstance(store, Store):
            store.project("account", "a1", seen.append)
        else:
            store.run(store.async_store.project("account", "a1", seen.append))
        return seen

    return {
        "stream": lambda: list(store.open("account", "a1").all()),
        "project": project,
        "subscriber": lambda: list(store.read("account", "a1", 1)),
        "storage": storage_read(store, 1),
    }


def assert_reads_fail(store: AnyStore, error_type: type[DecodeError], key: str,
                      number: int) -> None:
    for way, read in readers(store).items():
        with pytest.raises(error_type) as caught:
            read()
        error = caught.value
        assert (error.key, error.entity_type, error.entity_id, error.event_number) == (
            key, "account", "a1", number), way
        assert key in str(error) and f"event number {number}" in str(error), way


def stream_ids(store: AnyStore) -> list[str]:
    return [i.decode() for i, _ in raw(store).xrange(key_of(store))]


def write_first(store: AnyStore) -> None:
    store.open("account", "a1").write(Opened(owner="a"))


@pytest.mark.parametrize(
    ("values", "error_type"),
    [
        (fields(data=""), InvalidPayloadError),
        (fields(data="null"), InvalidPayloadError),
        (fields(data="[1, 2]"), InvalidPayloadError),
        (fields(data='{"amount": 1.5}'), InvalidPayloadError),
        (fields(data='{"amount": 1}{"amount": 2}'), InvalidPayloadError),
        (fields(name="deposited"), UnknownEventError),  # names are case-sensitive
        (fields(name=""), UnknownEventError),
        (fields(time="1.7e15"), CorruptEventError),
        (fields(time=""), CorruptEventError),
        ({"d": '{"amount": 1}'}, CorruptEventError),
        ({"x": "1"}, CorruptEventError),
    ],
    ids=["empty data", "null data", "data a list", "float for int",
         "two documents", "name case", "empty name", "time a float",
         "empty time", "only data", "foreign fields"],
)
def test_a_corrupt_record_is_reported_with_its_key_and_number(
    store: AnyStore, values: dict[str, bytes | str], error_type: type[DecodeError]
) -> None:
    write_first(store)
    key = add_raw(store, "2-0", values)

    assert_reads_fail(store, error_type, key, 2)


@pytest.mark.parametrize(
    ("values", "error_type"),
    [(fields(data=b"\xff\xfe"), InvalidPayloadError), (fields(name=b"\xff"), CorruptEventError)],
    ids=["data", "name"],
)
def test_a_record_that_is_not_utf8_is_reported_with_its_key_and_number(
    store: AnyStore, values: dict[str, bytes | str], error_type: type[DecodeError]
) -> None:
    write_first(store)
    key = add_raw(store, "2-0", values)

    assert_reads_fail(store, error_type, key, 2)


def test_a_record_with_extra_fields_in_another_order_is_read(store: AnyStore) -> None:
    """Not corrupt: the fields are found by name."""
    write_first(store)
    add_raw(store, "2-0", {"x": "1", **dict(reversed(fields().items()))})

    events = list(store.open("account", "a1").all())

    assert [(e.event_number, e.content) for e in events] == [
        (1, Opened(owner="a")), (2, Deposited(amount=1))]
    assert events[1].store_event_id == GOOD_ID


def test_events_before_a_corrupt_one_are_handed_out_first(store: AnyStore) -> None:
    write_first(store)
    key = add_raw(store, "2-0", fields(data="{"))
    stream = store.open("account", "a1")
    events = stream.all()

    assert next(events).event_number == 1
    with pytest.raises(InvalidPayloadError) as caught:
        next(events)
    assert (caught.value.key, caught.value.event_number) == (key, 2)
    assert stream.position == 1


def test_a_record_that_is_not_utf8_parks_its_entity_in_delivery_and_nothing_else(
    sync_store: Store,
) -> None:
    """The lock-and-read script's reply holds the entries: with a client that decodes
    replies, a field that is not UTF-8 still fails only its own entity."""
    write_first(sync_store)
    key = add_raw(sync_store, "2-0", fields(data=b"\xff\xfe"))
    storage = sync_store.storage
    assert isinstance(storage, RedisStorage)
    # As if appended: the head counts it (else delivery has nothing to hand out).
    storage.client.hset(storage.keys.heads("account", storage.keys.partition("account", "a1")),
                        "a1", 2)
    delivery = Delivery(storage, stub_broker(), events=EVENTS)
    recorder = Recorder()
    delivery.store.subscribe("account", "audit", recorder)
    delivery.store.open("account", "b1").write(Opened(owner="b"))
    delivery.start_publisher()
    delivery.start_worker()
    try:
        wait_for(lambda: admin.parked(delivery.store, "audit", "account"), "a1 to be parked")
        delivery.store.open("account", "c1").write(Opened(owner="c"))
        wait_for(lambda: recorder.has({"b1": 1, "c1": 1}), "b1 and c1 to be handled")
    finally:
        delivery.stop()

    [parked] = admin.parked(delivery.store, "audit", "account")
    assert (parked.entity_id, parked.event_number) == ("a1", 2)
    assert parked.error.startswith("InvalidPayloadError") and key in parked.error
    assert sorted(recorder.calls) == [("a1", 1), ("b1", 1), ("c1", 1)]


# --- entries out of sequence, times out of range, keys of another type ------------------


@pytest.mark.parametrize(("entry_ids", "bad"), [(["1-0", "5-0"], 5), (["2-0"], 2)],
                         ids=["5 after 1", "2 first"])
def test_an_entry_number_out_of_sequence_is_corrupt(
    store: AnyStore, entry_ids: list[str], bad: int
) -> None:
    for entry_id in entry_ids:
        key = add_raw(store, entry_id, fields())
    readings = {"stream": lambda: list(store.open("account", "a1").all()),
                "storage": storage_read(store)}

    for read in readings.values():
        try:
            events = read()
        except CorruptEventError as error:
            assert (error.key, error.event_number) == (key, bad)
            assert f"{bad}-0 is out of sequence" in str(error)
            continue
        raise AssertionError(f"read {[e.event_number for e in events]} without an error")


def test_a_gap_after_the_number_read_from_is_corrupt(store: AnyStore) -> None:
    """Read from event 1 on (event 1 read apart for the store_entity_id): 2 must follow."""
    write_first(store)
    key = add_raw(store, "3-0", fields())

    with pytest.raises(CorruptEventError) as caught:
        list(store.open_from("account", "a1", 1).all())
    assert (caught.value.key, caught.value.event_number) == (key, 3)


@pytest.mark.parametrize("time", ["9" * 20, "-" + "9" * 20, "9" * 18],
                         ids=["past int64", "before", "past year 9999"])
def test_an_event_time_out_of_range_is_corrupt(store: AnyStore, time: str) -> None:
    write_first(store)
    key = add_raw(store, "2-0", fields(time=time))

    assert_reads_fail(store, CorruptEventError, key, 2)


@pytest.mark.parametrize("after", [0, 1])
def test_a_stream_key_of_the_wrong_type_is_corrupt(store: AnyStore, after: int) -> None:
    key = key_of(store)
    raw(store).set(key, "not a stream")

    with pytest.raises(CorruptEventError) as caught:
        list(store.open_from("account", "a1", after).all())
    assert caught.value.key == key
    assert "another type than a stream" in str(caught.value)


def test_writing_after_an_entry_number_out_of_sequence_is_refused_with_an_es_error(
    store: AnyStore,
) -> None:
    stream = store.open("account", "a1")
    stream.write(Opened(owner="a"))
    key = add_raw(store, "5-0", fields())

    with pytest.raises(CorruptEventError) as caught:
        stream.write(Deposited(amount=2))

    assert (caught.value.key, caught.value.event_number) == (key, 2)
    assert "holds an entry numbered 5" in str(caught.value)
    assert stream_ids(store) == ["1-0", "5-0"]  # nothing written
    assert stream.position == 1


@pytest.mark.parametrize("known", [True, False], ids=["position known", "new entity"])
def test_writing_to_a_stream_key_of_the_wrong_type_is_refused_with_an_es_error(
    store: AnyStore, known: bool
) -> None:
    """Whether heads records a position for the entity (its stream then replaced) or not."""
    stream = store.open("account", "a1")
    if known:
        stream.write(Opened(owner="a"))
    key = key_of(store)
    client = raw(store)
    client.delete(key)
    client.set(key, "not a stream")

    with pytest.raises(CorruptEventError) as caught:
        stream.write(Deposited(amount=2))

    assert (caught.value.key, caught.value.event_number) == (key, 2 if known else 1)
    assert "another type than a stream" in str(caught.value)
    assert client.get(key) == b"not a stream"
