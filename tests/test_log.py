"""Guarantee 11, one log in commit order: every append records its events in its
partition's log in the same atomic step; positions are contiguous from 1 per partition,
never reused, and a batch takes consecutive ones. Runs on every storage."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
import redis
from conftest import (
    ACCOUNT_EVENTS,
    ALL_STORAGES,
    Deposited,
    Opened,
    delete_prefix,
    events_of,
    real_redis,
)

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    CorruptEventError,
    Event,
    InMemoryStorage,
    Position,
    RedisStorage,
    Store,
    TruncatedError,
)
from es_workers.redis.publisher import PublisherOptions
from es_workers.settings import Settings

AnyStorage = RedisStorage | InMemoryStorage


@pytest.fixture
def store(any_storage: AnyStorage) -> Store:
    return Store(any_storage, events=ACCOUNT_EVENTS)


@ALL_STORAGES
def test_a_batch_gets_consecutive_positions_and_the_events_carry_them(store: Store) -> None:
    with store.open("account", "a1") as stream:
        first = stream.write(Opened(owner="a"))
        batch = stream.write(Deposited(amount=1), Deposited(amount=2), Deposited(amount=3))
    partition = first[0].partition
    assert [p.partition for p in batch] == [partition] * 3
    assert [p.number for p in first + batch] == [1, 2, 3, 4]  # the partition's first events
    assert [e.position for e in store.read("account", "a1")] == first + batch


def test_positions_are_contiguous_per_partition_under_concurrent_writers(store: Store) -> None:
    """Threads writing at once (the sync storages: an async one has its event loop)."""
    def writer(n: int) -> None:
        for round_ in range(10):
            with store.open("account", f"w{n}-{round_}") as stream:
                written.extend(stream.write(Opened(owner="x"), Deposited(amount=n)))

    written: list[Position] = []
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    numbers: dict[int, list[int]] = defaultdict(list)
    for position in written:
        numbers[position.partition].append(position.number)
    for partition, taken in numbers.items():
        assert sorted(taken) == list(range(1, len(taken) + 1)), partition
    assert len(written) == 120


@ALL_STORAGES
def test_a_retried_write_returns_the_positions_it_took_first(any_storage: AnyStorage) -> None:
    any_storage.register("account", *ACCOUNT_EVENTS["account"])
    events = events_of("a1", Opened(owner="a"), Deposited(amount=1))
    first = any_storage.write("account", events)
    assert first and any_storage.write("account", events) == first


def write_accounts(store: Store, *entity_ids: str) -> list[Position]:
    positions = []
    for entity_id in entity_ids:
        with store.open("account", entity_id) as stream:
            positions += stream.write(Opened(owner=entity_id), Deposited(amount=1))
    return positions


@pytest.fixture(params=["memory", "fakeredis", "redis", "cluster"])
def one_partition(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A Store whose storage has one partition (its log is a total order), in memory,
    on fakeredis, on a real Redis and on a Redis Cluster."""
    events = {**ACCOUNT_EVENTS, "card": [Opened]}
    if request.param == "memory":
        yield Store(InMemoryStorage(), events=events)
        return
    client: redis.Redis = (
        fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
        if request.param == "fakeredis"
        else request.getfixturevalue("redis_cluster").client()
        if request.param == "cluster"
        else real_redis()
    )
    name = f"t-{uuid.uuid4().hex[:12]}"
    try:
        yield Store(RedisStorage(client, prefix=name, partitions=1), events=events)
    finally:
        delete_prefix(client, name)
        client.close()


ONE_PARTITION = pytest.mark.usefixtures("one_partition")


@ONE_PARTITION
def test_read_all_gives_every_event_in_commit_order_after_a_position(
        one_partition: Store) -> None:
    store = one_partition
    written = write_accounts(store, "b", "a", "c")
    with store.open("card", "k") as stream:
        written += stream.write(Opened(owner="k"))

    events = list(store.read_all())
    assert [e.position for e in events] == written == [Position(0, n) for n in range(1, 8)]
    assert [(e.entity_id, e.event_number) for e in events[:3]] == [("b", 1), ("b", 2), ("a", 1)]
    assert [e.position for e in store.read_all(after=Position(0, 4))] == written[4:]
    assert [e.entity_type for e in store.read_all(entity_types=["card"])] == ["card"]
    assert [e.position for e in store.read_all(limit=2)] == written[:2]
    reading = store.read_all(limit=3)
    list(reading)
    assert reading.positions == [Position(0, 3)]
    assert [e.position for e in store.read_all(after=reading.positions)] == written[3:]


@ONE_PARTITION
def test_read_all_reads_entities_whose_writes_interleave_within_a_page(
        one_partition: Store) -> None:
    store = one_partition  # a, b, a, b, a: the new entities' runs are not consecutive
    for number, entity_id in enumerate("ababa"):
        head = sum(1 for _ in store.read("account", entity_id))
        with store.open_from("account", entity_id, head) as stream:
            list(stream.all())
            stream.write(Deposited(amount=number))
    assert [(e.entity_id, e.event_number) for e in store.read_all()] == [
        ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]


@ONE_PARTITION
def test_log_reads_apply_the_upgrades(one_partition: Store) -> None:
    def doubled(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event.content, Deposited):
                event = replace(event, content=Deposited(amount=event.content.amount * 2))
            yield event

    write_accounts(one_partition, "a")
    store = Store(one_partition.storage, upgrades={"account": [doubled]})
    assert [e.content for e in store.read_all()] == [Opened(owner="a"), Deposited(amount=2)]


def test_read_all_merges_the_partitions_keeping_each_in_order(store: Store) -> None:
    written = write_accounts(store, *(f"e{n}" for n in range(30)))
    events = list(store.read_all())
    assert sorted(e.position for e in events) == sorted(written)  # type: ignore[type-var]
    by_partition: dict[int, list[int]] = defaultdict(list)
    for event in events:
        assert event.position is not None
        by_partition[event.position.partition].append(event.position.number)
    assert all(numbers == sorted(numbers) for numbers in by_partition.values())
    reading = store.read_all(limit=7)
    first = list(reading)
    rest = list(store.read_all(after=reading.positions))
    assert sorted(e.position for e in first + rest) == sorted(written)  # type: ignore[type-var]


@ONE_PARTITION
def test_follow_yields_the_log_then_a_write_from_another_thread_until_stopped(
        one_partition: Store) -> None:
    store = one_partition
    write_accounts(store, "a")
    seen: list[Event] = []

    def write_later() -> None:
        wait_until(lambda: len(seen) == 2)
        write_accounts(store, "b")

    writer = threading.Thread(target=write_later)
    writer.start()
    with store.follow() as follower:
        for event in follower:
            seen.append(event)
            if len(seen) == 4:
                threading.Timer(0.05, follower.stop).start()
    writer.join()
    assert [(e.entity_id, e.event_number) for e in seen] == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert follower.positions == [Position(0, 4)]


@ONE_PARTITION
def test_a_follower_that_is_stopped_while_waiting_returns(one_partition: Store) -> None:
    follower = one_partition.follow()
    threading.Timer(0.1, follower.stop).start()
    started = time.monotonic()
    assert list(follower) == []
    assert time.monotonic() - started < 5


@ONE_PARTITION
def test_trimming_keeps_what_a_named_follower_has_not_done(one_partition: Store) -> None:
    store = one_partition
    storage = store.storage
    assert isinstance(storage, RedisStorage | InMemoryStorage)
    write_accounts(store, "a", "b", "c")  # positions 1..6
    with store.follow(name="ledger") as follower:
        for event in follower:
            if event.position == Position(0, 2):
                break  # 1 and 2 handled (a clean exit counts the last one)
    assert storage.trim_logs(keep=1) > 0  # 3..6 kept: the ledger has not done them
    assert next(e.position for e in store.read_all(after=Position(0, 2))) == Position(0, 3)
    with pytest.raises(TruncatedError) as raised:
        list(store.read_all())
    assert raised.value.first_kept == Position(0, 3)
    assert "p0:3" in str(raised.value)

    with store.follow(name="ledger") as follower:  # goes on where it stopped
        resumed = [next(follower).position for _ in range(4)]
    assert resumed == [Position(0, n) for n in range(3, 7)]
    assert storage.trim_logs(keep=1) > 0  # the last write's entry stays
    with pytest.raises(TruncatedError) as raised:
        list(store.read_all(after=Position(0, 3)))
    # at least the last event kept: on Redis its whole write (c's, p0:5 and p0:6)
    assert raised.value.first_kept in (Position(0, 5), Position(0, 6))
    assert write_accounts(store, "d") == [Position(0, 7), Position(0, 8)]  # never reused


@ONE_PARTITION
def test_trimming_by_time_keeps_at_least_what_is_younger_or_the_last_n(
        one_partition: Store) -> None:
    store = one_partition
    storage = store.storage
    assert isinstance(storage, RedisStorage | InMemoryStorage)
    write_accounts(store, "a", "b")  # positions 1..4, older than `middle`
    time.sleep(0.05)
    middle = time.time()
    time.sleep(0.05)
    young = write_accounts(store, "c")  # 5, 6

    def since_middle_ms() -> int:
        return int((time.time() - middle) * 1000)

    assert storage.trim_logs(keep=4, keep_for_ms=since_middle_ms()) > 0  # the last 4 kept
    with pytest.raises(TruncatedError) as raised:
        list(store.read_all())
    assert raised.value.first_kept == Position(0, 3)
    assert storage.trim_logs(keep_for_ms=10_000_000) == 0  # all young: nothing goes
    assert storage.trim_logs(keep_for_ms=since_middle_ms()) > 0  # b's write is older
    with pytest.raises(TruncatedError) as raised:
        list(store.read_all())
    assert raised.value.first_kept == Position(0, 5)
    assert [e.position for e in store.read_all(after=Position(0, 4))] == young
    assert write_accounts(store, "d") == [Position(0, 7), Position(0, 8)]  # never reused
    with pytest.raises(ValueError, match="keep"):
        storage.trim_logs()


@ONE_PARTITION
def test_wait_for_takes_a_position(one_partition: Store) -> None:
    store = one_partition
    seen: list[Event] = []
    store.subscribe("account", "seen", seen.append)
    publishing = threading.Thread(target=store.start, daemon=True)
    if isinstance(store.storage, InMemoryStorage):
        publishing.start()
        try:
            positions = write_accounts(store, "a")
            store.wait_for(positions[-1], timeout=5)
            assert [e.event_number for e in seen] == [1, 2]
        finally:
            store.close()
    with pytest.raises(ValueError, match="no event at p0:99"):
        store.wait_for(Position(0, 99))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_publisher_trims_the_log_but_never_past_a_named_follower(
        redis_client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = RedisStorage(redis_client, prefix=prefix, partitions=1,
                           publisher=PublisherOptions(log_keep=1, trim_every_ms=10))
    store = Store(storage, events=ACCOUNT_EVENTS)
    write_accounts(store, "a", "b", "c")  # p0:1..6
    with store.follow(name="ledger") as follower:
        for event in follower:
            if event.position == Position(0, 2):
                break

    def first_kept() -> Position | None:
        try:
            list(store.read_all())
        except TruncatedError as error:
            return error.first_kept
        return None

    rounds: list[int] = []
    trim = storage.trim_logs

    def counted(keep: int | None = None, keep_for_ms: int | None = None) -> int:
        rounds.append(1)
        return trim(keep, keep_for_ms)

    monkeypatch.setattr(storage, "trim_logs", counted)
    publishing = threading.Thread(target=store.start)
    publishing.start()
    try:
        wait_until(lambda: first_kept() == Position(0, 3))
        done = len(rounds)
        wait_until(lambda: len(rounds) >= done + 3)  # a few trimming rounds more: still kept
        assert first_kept() == Position(0, 3)
    finally:
        store.close()
        publishing.join()


def test_the_publisher_trims_the_log_by_time_alone(redis_client: redis.Redis,
                                                    prefix: str) -> None:
    """ES_LOG_KEEP_FOR_MS without ES_LOG_KEEP: the settings reach the publisher, which trims
    what is older (the last write stays)."""
    options = Settings(log_keep_for_ms=1, log_trim_every_ms=10).publisher_options()
    assert (options.log_keep, options.log_keep_for_ms) == (None, 1)
    storage = RedisStorage(redis_client, prefix=prefix, partitions=1, publisher=options)
    store = Store(storage, events=ACCOUNT_EVENTS)
    write_accounts(store, "a", "b", "c")  # p0:1..6, one write each

    def first_kept() -> Position | None:
        try:
            list(store.read_all())
        except TruncatedError as error:
            return error.first_kept
        return None

    publishing = threading.Thread(target=store.start)
    publishing.start()
    try:
        wait_until(lambda: first_kept() == Position(0, 5))  # c's write: the last one
    finally:
        store.close()
        publishing.join()


def test_a_log_key_of_another_type_refuses_the_write_and_nothing_is_written(
        storage: RedisStorage) -> None:
    store = Store(storage, events=ACCOUNT_EVENTS)
    log_key = storage.keys.log(storage.keys.partition("account", "a1"))
    storage.client.set(log_key, "not a stream")
    with pytest.raises(CorruptEventError) as caught, store.open("account", "a1") as stream:
        stream.write(Opened(owner="a"))
    assert caught.value.key == log_key and "log key holds another type" in str(caught.value)
    assert list(store.read("account", "a1")) == []
    assert storage.outbox_backlog() == 0


def test_after_naming_a_partition_the_store_lacks_is_refused(one_partition: Store) -> None:
    with pytest.raises(ValueError, match="partition 1"):
        list(one_partition.read_all(after=Position(1, 0)))


def test_a_named_follower_holds_trimming_in_partitions_it_has_not_read_yet(
        store: Store) -> None:
    storage = store.storage
    assert isinstance(storage, RedisStorage | InMemoryStorage)
    follower = store.follow(name="slow", entity_types=["card"])
    iter(follower)  # started: from now on nothing it has not read is trimmed
    written = write_accounts(store, *(f"e{n}" for n in range(10)))
    assert storage.trim_logs(keep=1) == 0
    assert sorted(e.position for e in store.read_all()) == sorted(written)  # type: ignore[type-var]


def test_each_position_of_a_write_names_its_event(one_partition: Store) -> None:
    storage = one_partition.storage
    assert isinstance(storage, RedisStorage | InMemoryStorage)
    write_accounts(one_partition, "a")
    with one_partition.open("account", "b") as stream:
        stream.write(Opened(owner="b"), Deposited(amount=1), Deposited(amount=2))
    assert [storage.log_entry(Position(0, n)) for n in range(1, 7)] == [
        ("account", "a", 1), ("account", "a", 2), ("account", "b", 1), ("account", "b", 2),
        ("account", "b", 3), None]
    assert [e.event_number for e in one_partition.read_all(after=Position(0, 3))] == [2, 3]


@pytest.mark.anyio
async def test_the_async_log_on_a_cluster_reads_and_follows(redis_cluster: Any) -> None:
    name = f"t-{uuid.uuid4().hex[:12]}"
    store = AsyncStore(AsyncRedisStorage(redis_cluster.async_client(), prefix=name),
                       events=ACCOUNT_EVENTS)
    try:
        async with store.open("account", "a") as stream:
            positions = await stream.write(Opened(owner="a"), Deposited(amount=1))
        assert [e.position async for e in store.read_all()] == positions

        async def write_later() -> None:
            await asyncio.sleep(0.2)
            async with store.open("account", "b") as other:
                await other.write(Opened(owner="b"))

        writing = asyncio.create_task(write_later())
        async with store.follow(after=positions) as follower:
            async for event in follower:
                assert event.entity_id == "b"
                follower.stop()
        await writing
        await store.wait_for(positions[-1])  # no subscribers: returns at once
    finally:
        await store.close()
        with redis_cluster.client() as client:
            delete_prefix(client, name)


def test_events_stored_before_the_log_read_with_no_position(storage: RedisStorage) -> None:
    store = Store(storage, events=ACCOUNT_EVENTS)
    key = storage.keys.stream("account", "old")
    fields = {"n": "Opened", "d": '{"owner":"o"}', "t": "1700000000000000", "e": "id-1"}
    storage.client.xadd(key, fields, id="1-0")  # as append.lua wrote them before the log
    storage.client.xadd(key, {**fields, "n": "Deposited", "d": '{"amount":1}', "e": "id-2",
                              "m": '{"user":"u"}'}, id="2-0")
    storage.client.hset(storage.keys.heads("account", storage.keys.partition("account", "old")),
                        "old", 2)
    old = list(store.read("account", "old"))
    assert [(e.event_number, e.position, dict(e.metadata)) for e in old] == [
        (1, None, {}), (2, None, {"user": "u"})]
    with store.open("account", "old") as stream:
        list(stream.all())
        (position,) = stream.write(Deposited(amount=2))
    assert [e.position for e in store.read("account", "old")] == [None, None, position]
