"""RedisStorage on fakeredis and on a real Redis: the layout the append script keeps, the
transactional outbox, idempotent retries after a lost reply, trimming, corrupt records,
configuration errors and Redis Cluster readiness."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from async_kit import BlockingStorage
from conftest import ACCOUNT_EVENTS, Deposited, Opened, Withdrawn, client_beside, events_of
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from es_workers import (
    AsyncRedisStorage,
    ConcurrencyError,
    ConfigurationError,
    CorruptEventError,
    DecodeError,
    EsError,
    Event,
    InvalidPayloadError,
    Position,
    RedisStorage,
    StorageUnavailableError,
    Store,
    UnknownEventError,
)
from es_workers.ids import new_ids

MakeStore = Callable[..., Store]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Keys:
    """The keys one entity's append touches, and what they hold."""

    def __init__(self, storage: RedisStorage, entity_id: str, entity_type: str = "account"):
        self.client: Any = storage.client  # redis-py types every reply as optional
        partition = storage.keys.partition(entity_type, entity_id)
        self.entity_id = entity_id
        self.stream = storage.keys.stream(entity_type, entity_id)
        self.heads = storage.keys.heads(entity_type, partition)
        self.index = storage.keys.index(entity_type, partition)
        self.outbox = storage.keys.outbox(partition)

    def snapshot(self) -> tuple[Any, ...]:
        return (
            self.client.xrange(self.stream),
            self.client.hget(self.heads, self.entity_id),
            self.client.zrange(self.index, 0, -1),
            self.client.xrange(self.outbox),
        )

    def stream_ids(self) -> list[str]:
        return [text(entry_id) for entry_id, _ in self.client.xrange(self.stream)]

    def outbox_entries(self) -> list[dict[str, str]]:
        return [
            {text(k): text(v) for k, v in fields.items()}
            for _, fields in self.client.xrange(self.outbox)
        ]


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


# --- layout and outbox -------------------------------------------------------------------


def test_stream_entry_ids_are_the_event_numbers(store: Store, storage: RedisStorage) -> None:
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1))
    with store.open("account", "a1") as stream:
        list(stream.all())
        stream.write(Withdrawn(amount=1))

    keys = Keys(storage, "a1")
    assert keys.stream_ids() == ["1-0", "2-0", "3-0"]
    assert int(storage.client.hget(keys.heads, "a1")) == 3  # type: ignore[arg-type]
    assert storage.position("account", "a1") == 3
    assert storage.position("account", "unknown") == 0


def test_each_appended_batch_is_recorded_once_in_the_outbox(
    store: Store, storage: RedisStorage
) -> None:
    with store.open("account", "a1") as stream:
        stream.write(Opened(owner="a"), Deposited(amount=1))
        stream.write(Withdrawn(amount=1))

    assert Keys(storage, "a1").outbox_entries() == [
        {"type": "account", "id": "a1", "first": "1", "last": "2"},
        {"type": "account", "id": "a1", "first": "3", "last": "3"},
    ]


def test_a_conflicting_batch_leaves_stream_heads_index_and_outbox_unchanged(
    store: Store, storage: RedisStorage
) -> None:
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1))
    keys = Keys(storage, "a1")
    before = keys.snapshot()
    assert storage.client.xlen(keys.outbox) == 1

    for batch in (
        events_of("a1", Deposited(amount=2), Deposited(amount=3), after=1),  # 2 is taken
        events_of("a1", Opened(owner="b"), Deposited(amount=2)),  # 1 is taken
        events_of("a1", Deposited(amount=9), after=4),  # gap
    ):
        with pytest.raises(ConcurrencyError):
            storage.write("account", batch)

    assert keys.snapshot() == before
    assert storage.client.xlen(keys.stream) == 2
    assert storage.client.xlen(keys.outbox) == 1


def test_writing_the_same_events_twice_adds_nothing_to_stream_or_outbox(
    storage: RedisStorage,
) -> None:
    storage.register("account", *ACCOUNT_EVENTS["account"])
    batch = events_of("a1", Opened(owner="a"), Deposited(amount=1))
    keys = Keys(storage, "a1")

    storage.write("account", batch)
    after_first = keys.snapshot()
    storage.write("account", batch)

    assert keys.snapshot() == after_first
    assert storage.client.xlen(keys.stream) == 2
    assert storage.client.xlen(keys.outbox) == 1


@pytest.fixture
def half_storage(half: str, storage: RedisStorage, redis_client: redis.Redis, prefix: str,
                 request: pytest.FixtureRequest) -> Iterator[Any]:
    """The backend's RedisStorage, or (`half` async) an AsyncRedisStorage on the same
    server and prefix behind the sync port; account events registered."""
    if half == "sync":
        made: Any = storage
    else:
        client = client_beside(redis_client, request, decode_responses=False, use_asyncio=True)
        made = BlockingStorage(AsyncRedisStorage(client, prefix=prefix))
    made.register("account", *ACCOUNT_EVENTS["account"])
    yield made
    if half == "async":
        made.close()


def test_a_lost_reply_retried_by_the_caller_with_the_same_events_succeeds_once(
    half: str, half_storage: Any, storage: RedisStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = events_of("a1", Opened(owner="a"), Deposited(amount=1))
    target = half_storage if half == "sync" else half_storage.async_storage
    script = target.append_script
    replies: list[Any] = []

    def lost(reply: Any) -> Any:
        replies.append(reply)
        if len(replies) == 1:
            raise redis.ConnectionError("connection reset before the reply arrived")
        return reply

    def lose_first_reply(**kwargs: Any) -> Any:
        return lost(script(**kwargs))  # the script ran: the events are stored

    async def lose_first_reply_async(**kwargs: Any) -> Any:
        return lost(await script(**kwargs))

    monkeypatch.setattr(target, "append_script",
                        lose_first_reply if half == "sync" else lose_first_reply_async)

    with pytest.raises(StorageUnavailableError) as raised:
        half_storage.write("account", batch)
    assert raised.value.outcome_unknown
    # the caller retries with the same Event objects: told the positions first written
    partition = storage.keys.partition("account", "a1")
    assert half_storage.write("account", batch) == [Position(partition, 1),
                                                    Position(partition, 2)]

    keys = Keys(storage, "a1")  # the sync storage on the same prefix, to look
    assert [list(reply) for reply in replies] == [[0, 2, 1], [1, 2, 1]]
    assert keys.stream_ids() == ["1-0", "2-0"]
    assert storage.client.xlen(keys.outbox) == 1
    assert [e.store_event_id for e in half_storage.read("account", "a1")] == [
        e.store_event_id for e in batch
    ]


@pytest.mark.single_redis  # sets the retry policy of one Redis's connection pool
def test_redis_py_resending_a_script_whose_reply_was_lost_does_not_duplicate(
    redis_client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection error after the server ran the script: redis-py reconnects and sends the
    # same EVALSHA again; the script recognises its store_event_ids and answers "done".
    redis_client.connection_pool.connection_kwargs["retry"] = Retry(NoBackoff(), 2)
    redis_client.connection_pool.reset()  # new connections, with that retry policy
    store = Store(RedisStorage(redis_client, prefix=prefix), events=ACCOUNT_EVENTS)
    parse: Any = redis_client.parse_response
    replies: list[Any] = []

    def lose_first_script_reply(connection: Any, command_name: str, **options: Any) -> Any:
        reply = parse(connection, command_name, **options)
        if command_name == "EVALSHA":
            replies.append(reply)
            if len(replies) == 1:
                raise redis.ConnectionError("connection reset before the reply arrived")
        return reply

    monkeypatch.setattr(redis_client, "parse_response", lose_first_script_reply)
    stream = store.open("account", "a1")
    stream.write(Opened(owner="a"), Deposited(amount=1))

    keys = Keys(store.storage, "a1")  # type: ignore[arg-type]
    assert [list(reply) for reply in replies] == [[0, 2, 1], [1, 2, 1]]
    assert stream.position == 2
    assert keys.stream_ids() == ["1-0", "2-0"]
    assert redis_client.xlen(keys.outbox) == 1


def test_a_server_without_the_append_script_is_given_it_again(
    backend: str, half_storage: Any, storage: RedisStorage
) -> None:
    """(With WAIT after the script: test_failures.py, on a server of its own.)"""
    if backend == "redis":
        pytest.skip("SCRIPT FLUSH would empty the shared server's script cache")
    half_storage.write("account", events_of("a1", Opened(owner="a")))
    storage.client.script_flush()

    half_storage.write("account", events_of("a1", Deposited(amount=1), after=1))

    assert Keys(storage, "a1").stream_ids() == ["1-0", "2-0"]


# --- trimming ----------------------------------------------------------------------------


def test_trimming_an_entity_stream_does_not_reset_its_position(
    store: Store, storage: RedisStorage
) -> None:
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1), Deposited(amount=2))
    keys = Keys(storage, "a1")
    storage.client.xtrim(keys.stream, maxlen=0, approximate=False)
    assert storage.client.xlen(keys.stream) == 0

    blind = store.open("account", "a1")
    assert list(blind.all()) == []
    with pytest.raises(ConcurrencyError) as caught:
        blind.write(Opened(owner="again"))  # number 1 was written before the trim
    with pytest.raises(ConcurrencyError):
        storage.write("account", events_of("a1", Deposited(amount=3), after=2))
    assert (caught.value.expected, caught.value.actual) == (0, 3)

    after_trim = store.open_from("account", "a1", 3)
    assert list(after_trim.all()) == []
    after_trim.write(Deposited(amount=3))

    assert keys.stream_ids() == ["4-0"]
    assert [(e.event_number, e.content) for e in store.open_from("account", "a1", 3).all()] == [
        (4, Deposited(amount=3))
    ]
    assert storage.entity_ids("account") == (["a1"], None)


def test_an_entity_whose_heads_entry_was_lost_takes_its_position_from_the_stream(
    store: Store, storage: RedisStorage
) -> None:
    store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=1))
    keys = Keys(storage, "a1")
    storage.client.hdel(keys.heads, "a1")

    with pytest.raises(ConcurrencyError) as caught:
        store.open("account", "a1").write(Opened(owner="again"))
    stream = store.open("account", "a1")
    list(stream.all())
    stream.write(Withdrawn(amount=1))

    assert caught.value.actual == 2
    assert keys.stream_ids() == ["1-0", "2-0", "3-0"]
    assert storage.position("account", "a1") == 3


# --- reading -----------------------------------------------------------------------------


def test_a_long_stream_is_read_whole_across_read_pages(store: Store, storage: RedisStorage) -> None:
    total = 2_345
    stream = store.open("account", "long")
    stream.write(Opened(owner="a"))
    for start in range(1, total, 500):
        stream.write(*(Deposited(amount=n) for n in range(start, min(start + 500, total))))
    assert stream.position == total

    events = list(store.open("account", "long").all())
    tail = list(store.open_from("account", "long", 1_500).all())

    assert [e.event_number for e in events] == list(range(1, total + 1))
    assert [e.content for e in events[1:]] == [Deposited(amount=n) for n in range(1, total)]
    assert {e.store_entity_id for e in events} == {events[0].store_event_id}
    assert [e.event_number for e in tail] == list(range(1_501, total + 1))
    assert {e.store_entity_id for e in tail} == {events[0].store_event_id}
    for after in (total - 2_000, total - 1_001, total - 1_000, total - 999):  # page edges
        read = [e.event_number for e in storage.read("account", "long", after)]
        assert read == list(range(after + 1, total + 1))


def test_a_client_that_decodes_responses_reads_and_writes_the_same(
    redis_client: redis.Redis, prefix: str, request: pytest.FixtureRequest
) -> None:
    decoding = client_beside(redis_client, request, decode_responses=True)
    bytes_store = Store(RedisStorage(redis_client, prefix=prefix), events=ACCOUNT_EVENTS)
    text_store = Store(RedisStorage(decoding, prefix=prefix), events=ACCOUNT_EVENTS)

    text_store.open("account", "a1").write(Opened(owner="ünï"), Deposited(amount=1))
    bytes_stream = bytes_store.open("account", "a1")
    list(bytes_stream.all())
    bytes_stream.write(Withdrawn(amount=1))

    read = [list(s.open_from("account", "a1", 1).all()) for s in (text_store, bytes_store)]
    assert read[0] == read[1]
    assert [e.content for e in text_store.open("account", "a1").all()] == [
        Opened(owner="ünï"),
        Deposited(amount=1),
        Withdrawn(amount=1),
    ]
    assert text_store.storage.entity_ids("account") == (["a1"], None)
    decoding.close()


# --- corrupt or unknown records ----------------------------------------------------------


def add_raw(storage: RedisStorage, entity_id: str, entry_id: str, fields: dict[str, str]) -> str:
    """Puts a record straight into an entity stream, as a buggy or foreign writer would."""
    key = Keys(storage, entity_id).stream
    storage.client.xadd(key, fields, id=entry_id)  # type: ignore[arg-type]
    return key


def good_fields(name: str = "Deposited", data: str = '{"amount": 1}') -> dict[str, str]:
    return {"n": name, "d": data, "t": "1700000000000000", "e": new_ids(1)[0]}


def test_an_unknown_event_name_raises_unknown_event_error_naming_the_record(
    store: Store, storage: RedisStorage
) -> None:
    store.open("account", "a1").write(Opened(owner="a"))
    key = add_raw(storage, "a1", "2-0", good_fields(name="Closed", data="{}"))

    stream = store.open("account", "a1")
    events = stream.all()
    assert next(events).event_number == 1  # the events before the bad one are read
    with pytest.raises(UnknownEventError) as caught:
        next(events)

    error = caught.value
    assert (error.key, error.entity_type, error.entity_id, error.event_number, error.name) == (
        key,
        "account",
        "a1",
        2,
        "Closed",
    )
    for part in (key, "account", "'a1'", "event number 2", "'Closed'"):
        assert part in str(error)
    assert isinstance(error, DecodeError) and isinstance(error, EsError)
    assert stream.position == 1


@pytest.mark.parametrize(
    ("fields", "error_type"),
    [
        (good_fields(data="{not json"), InvalidPayloadError),
        (good_fields(data='{"amount": "lots"}'), InvalidPayloadError),
        (good_fields(data='{"owner": "a"}'), InvalidPayloadError),  # amount missing
        ({k: v for k, v in good_fields().items() if k != "d"}, CorruptEventError),
        ({k: v for k, v in good_fields().items() if k != "n"}, CorruptEventError),
        ({k: v for k, v in good_fields().items() if k != "e"}, CorruptEventError),
        ({**good_fields(), "t": "yesterday"}, CorruptEventError),
    ],
    ids=["bad JSON", "wrong type", "missing field", "no d", "no n", "no e", "bad t"],
)
def test_a_corrupt_record_raises_a_decode_error_naming_its_key_and_number(
    store: Store, storage: RedisStorage, fields: dict[str, str], error_type: type[DecodeError]
) -> None:
    store.open("account", "a1").write(Opened(owner="a"))
    key = add_raw(storage, "a1", "2-0", fields)

    for read in (
        lambda: list(store.open("account", "a1").all()),
        lambda: store.project("account", "a1", lambda e: None),
        lambda: list(store.read("account", "a1", 1)),  # what subscribers are handed
        lambda: list(storage.read("account", "a1", 1)),
    ):
        with pytest.raises(error_type) as caught:
            read()
        assert (caught.value.key, caught.value.event_number) == (key, 2)
        assert key in str(caught.value) and "event number 2" in str(caught.value)
        assert isinstance(caught.value, EsError)


def test_an_entry_id_that_is_not_an_event_number_raises_corrupt_event_error(
    store: Store, storage: RedisStorage
) -> None:
    store.open("account", "a1").write(Opened(owner="a"))
    key = add_raw(storage, "a1", "2-7", good_fields())

    with pytest.raises(CorruptEventError, match="2-7") as caught:
        list(store.open("account", "a1").all())

    assert caught.value.key == key


def test_a_corrupt_first_event_fails_a_read_from_a_later_number(
    storage: RedisStorage, store: Store
) -> None:
    # Reading from n > 0 takes the store_entity_id from event 1: its absence is reported.
    add_raw(storage, "a1", "1-0", {k: v for k, v in good_fields().items() if k != "e"})
    add_raw(storage, "a1", "2-0", good_fields())

    with pytest.raises(CorruptEventError) as caught:
        list(store.open_from("account", "a1", 1).all())

    assert caught.value.event_number == 1


def test_read_errors_are_not_swallowed_by_upgrades(
    make_store: MakeStore, storage: RedisStorage
) -> None:
    def passthrough(events: Iterator[Event]) -> Iterator[Event]:
        yield from events

    def lenient(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:  # an upgrade that only looks at what it is given
            if not isinstance(event.content, Withdrawn):
                yield event

    store = make_store(upgrades={"account": [passthrough, lenient]})
    store.open("account", "a1").write(Opened(owner="a"))
    add_raw(storage, "a1", "2-0", good_fields(name="Renamed"))
    seen: list[int] = []

    with pytest.raises(UnknownEventError):
        store.project("account", "a1", lambda e: seen.append(e.event_number))
    with pytest.raises(UnknownEventError):
        list(store.read("account", "a1"))

    assert seen == [1]


# --- configuration -----------------------------------------------------------------------


def test_the_number_of_partitions_is_fixed_per_prefix(
    redis_client: redis.Redis, prefix: str
) -> None:
    first = RedisStorage(redis_client, prefix=prefix, partitions=4)
    again = RedisStorage(redis_client, prefix=prefix)
    same = RedisStorage(redis_client, prefix=prefix, partitions=4)

    with pytest.raises(ConfigurationError, match="4 partitions") as caught:
        RedisStorage(redis_client, prefix=prefix, partitions=8)

    assert first.partitions == again.partitions == same.partitions == 4
    assert isinstance(caught.value, EsError)
    assert redis_client.hget(f"{prefix}:meta", "partitions") == b"4"


def test_a_new_prefix_gets_the_default_number_of_partitions(
    redis_client: redis.Redis, prefix: str
) -> None:
    assert RedisStorage(redis_client, prefix=prefix).partitions == 16


@pytest.mark.parametrize("partitions", [0, -1, 4097, "4", 2.0])
def test_an_invalid_number_of_partitions_is_refused_before_anything_is_written(
    redis_client: redis.Redis, prefix: str, partitions: Any
) -> None:
    with pytest.raises(ConfigurationError):
        RedisStorage(redis_client, prefix=prefix, partitions=partitions)

    assert list(redis_client.scan_iter(f"{prefix}:*")) == []


def test_a_corrupt_partitions_record_is_a_configuration_error(
    redis_client: redis.Redis, prefix: str
) -> None:
    redis_client.hset(f"{prefix}:meta", "partitions", "many")

    with pytest.raises(ConfigurationError, match="partitions"):
        RedisStorage(redis_client, prefix=prefix)


@pytest.mark.parametrize("bad", ["", "has space", "{tag}", "a:b", "x" * 41, "é", None])
def test_a_bad_key_prefix_is_refused_before_anything_is_written(
    redis_client: redis.Redis, bad: Any
) -> None:
    with pytest.raises(ConfigurationError, match="prefix") as caught:
        RedisStorage(redis_client, prefix=bad)

    assert repr(bad) in str(caught.value)
    if bad:
        assert list(redis_client.scan_iter(f"{bad}:*")) == []


# --- Redis Cluster readiness -------------------------------------------------------------


def test_every_key_of_one_append_shares_one_hash_slot(
    storage: RedisStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = storage.append_script
    calls: list[list[str]] = []

    def spy(*, keys: list[str], args: list[Any]) -> Any:
        calls.append(list(keys))
        return script(keys=keys, args=args)

    monkeypatch.setattr(storage, "append_script", spy)
    store = Store(storage, events={**ACCOUNT_EVENTS, "card": [Opened]})
    entities = [("account", f"acc-{n}") for n in range(20)] + [
        ("card", "c{1}"),
        ("card", "{weird}id"),
        ("account", "}{"),
    ]
    for entity_type, entity_id in entities:
        with store.open(entity_type, entity_id) as stream:
            stream.write(Opened(owner=entity_id))
            stream.write(Opened(owner="again"))

    assert len(calls) == 2 * len(entities)
    slots = set()
    for keys in calls:
        assert len(keys) == 7  # the stream, heads, index, outbox, scratch, truncations, log
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
        slots.add(key_slot(keys[0].encode()))
    assert len(slots) > 4  # entities are spread over partitions, hence slots
    touched = {text(k) for k in storage.client.scan_iter(f"{storage.keys.prefix}:*")}
    assert touched - {storage.keys.meta()} <= {key for keys in calls for key in keys}


def test_every_partition_has_its_own_hash_tag_naming_the_prefix(storage: RedisStorage) -> None:
    prefix = storage.keys.prefix
    for partition in range(storage.partitions):
        tag = storage.keys.tag(partition)
        assert tag.startswith(f"{prefix}:{{{prefix}:p{partition}.")
        keys = [
            storage.keys.heads("account", partition),
            storage.keys.index("account", partition),
            storage.keys.outbox(partition),
        ]
        assert all(key.startswith(tag + ":") for key in keys)
        assert {key_slot(key.encode()) for key in keys} == {key_slot(tag.encode())}


# --- metrics -----------------------------------------------------------------------------


def test_appends_and_conflicts_are_counted_for_prometheus(store: Store) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"entity_type": "account"}) or 0.0

    appended, conflicts = sample("es_appends_total"), sample("es_conflicts_total")
    store.open("account", "m1").write(Opened(owner="a"), Deposited(amount=1))
    with pytest.raises(ConcurrencyError):
        store.open("account", "m1").write(Opened(owner="b"))

    assert sample("es_appends_total") - appended == 2
    assert sample("es_conflicts_total") - conflicts == 1


# --- Small entities ------------------------------------------------------------------------


def test_a_new_entity_stream_holds_only_what_it_stores(storage: RedisStorage, backend: str) -> None:
    """Redis gives a new stream node stream-node-max-bytes (4096 by default) up front: the
    append script copies a new stream so that a one-event entity costs what it holds. The
    copy keeps every field, leaves no scratch key, and later appends go on from it."""
    store = Store(storage, events=ACCOUNT_EVENTS)
    with store.open("account", "small") as stream:
        stream.write(Opened(owner="x" * 200))
    key = storage.keys.stream("account", "small")

    if backend != "fakeredis":  # fakeredis has no allocator to measure
        size = storage.client.memory_usage(key, samples=0)
        assert size is not None and size <= 1024, f"a one-event stream takes {size} B"
    with store.open("account", "small") as stream:
        assert [e.content for e in stream.all()] == [Opened(owner="x" * 200)]
        stream.write(Deposited(amount=1), Deposited(amount=2))
    assert [e.event_number for e in storage.read("account", "small")] == [1, 2, 3]
    scratch = [k for k in storage.client.scan_iter(f"{storage.keys.prefix}:*")
               if b"scratch" in (k if isinstance(k, bytes) else k.encode())]
    assert scratch == []
