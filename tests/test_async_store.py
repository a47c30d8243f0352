"""AsyncStore and AsyncStream: the Store's guarantees through asyncio, on the async in-memory
storage, on fakeredis' async client and on a real Redis. An AsyncStore and a Store of the
same data see the same events; concurrent tasks and a sync writer never duplicate or skip
an event number. (The Storage contract itself runs on the async storages in
test_storage.py, test_stream.py and test_upgrades.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import fakeredis
import pytest
import redis
import redis.asyncio
from async_kit import async_client
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened, delete_prefix, real_redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from es_workers import (
    AsyncInMemoryStorage,
    AsyncRedisStorage,
    AsyncStore,
    ConcurrencyError,
    ConfigurationError,
    Content,
    CorruptEventError,
    Event,
    InMemoryStorage,
    InvalidMetadataError,
    InvalidNameError,
    NotRegisteredError,
    Position,
    RedisStorage,
    Settings,
    StorageUnavailableError,
    Store,
    StreamNotReadError,
)
from es_workers.wiring import redis_client

pytestmark = pytest.mark.anyio


@dataclass
class Stores:
    """An AsyncStore and a Store on the same data."""

    kind: str
    async_store: AsyncStore
    store: Store
    prefix: str


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    kind = str(request.param)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    if kind == "memory":
        memory = InMemoryStorage()
        both = Stores(kind, AsyncStore(AsyncInMemoryStorage(memory), events=ACCOUNT_EVENTS),
                      Store(memory, events=ACCOUNT_EVENTS), prefix)
        yield both
        return
    if kind == "fakeredis":
        server = fakeredis.FakeServer(version=(7, 0))
        sync_client: redis.Redis = fakeredis.FakeRedis(server=server)
        aio = fakeredis.FakeAsyncRedis(server=server)
    else:
        sync_client = real_redis()
        aio = async_client(kind, REDIS_URL)
    both = Stores(kind, AsyncStore(AsyncRedisStorage(aio, prefix=prefix), events=ACCOUNT_EVENTS),
                  Store(RedisStorage(sync_client, prefix=prefix), events=ACCOUNT_EVENTS), prefix)
    try:
        yield both
    finally:
        await both.async_store.close()
        delete_prefix(sync_client, prefix)
        sync_client.close()


async def events_of(store: AsyncStore, entity_id: str = "a1") -> list[Event]:
    return [event async for event in store.open("account", entity_id).all()]


async def test_a_write_appends_events_numbered_from_one_and_all_reads_them(
    stores: Stores,
) -> None:
    store = stores.async_store
    async with store.open("account", "a1") as stream:
        await stream.write(Opened(owner="ann"), Deposited(amount=5))
        assert stream.position == 2
        await stream.write(Deposited(amount=6))
        assert stream.position == 3

    events = await events_of(store)
    assert [(e.event_number, e.content) for e in events] == [
        (1, Opened(owner="ann")), (2, Deposited(amount=5)), (3, Deposited(amount=6))
    ]
    assert {e.store_entity_id for e in events} == {events[0].store_event_id}
    assert await store.entity_ids("account") == (["a1"], None)


async def test_position_follows_what_was_read(stores: Stores) -> None:
    store = stores.async_store
    await store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))

    stream = store.open("account", "a1")
    reading = stream.all()
    assert stream.position == 0
    await anext(reading)
    assert stream.position == 1
    async for _ in reading:
        pass
    assert (stream.position, reading.finished) == (2, True)


async def test_a_stale_stream_gets_concurrency_error_and_writes_nothing(stores: Stores) -> None:
    store = stores.async_store
    stale = store.open("account", "a1")
    await store.open("account", "a1").write(Opened(owner="ann"))

    with pytest.raises(ConcurrencyError) as caught:
        await stale.write(Opened(owner="bob"), Deposited(amount=1))

    assert (caught.value.expected, caught.value.actual) == (0, 1)
    assert [e.content for e in await events_of(store)] == [Opened(owner="ann")]
    assert stale.position == 0


async def test_a_stream_opened_from_a_number_is_read_before_it_writes(stores: Stores) -> None:
    store = stores.async_store
    await store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=1))
    stream = store.open_from("account", "a1", 1)

    with pytest.raises(StreamNotReadError):
        await stream.write(Deposited(amount=2))
    assert [e.event_number async for e in stream.all()] == [2]
    await stream.write(Deposited(amount=2))

    assert [e.event_number for e in await events_of(store)] == [1, 2, 3]


async def test_project_takes_plain_and_async_handlers(stores: Stores) -> None:
    store = stores.async_store
    await store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=5))
    seen: list[tuple[str, int]] = []

    async def later(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(("async", event.event_number))

    await store.project("account", "a1", lambda event: seen.append(("sync", event.event_number)))
    await store.open("account", "a1").project(later)

    assert seen == [("sync", 1), ("sync", 2), ("async", 1), ("async", 2)]


async def test_upgrades_apply_on_read_and_dropped_events_still_count(stores: Stores) -> None:
    def drop_openings_double_deposits(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event.content, Deposited):
                yield dataclasses.replace(event, content=Deposited(amount=event.content.amount * 2))

    await stores.async_store.open("account", "a1").write(Opened(owner="a"), Deposited(amount=5))
    store = AsyncStore(stores.async_store.storage,
                       upgrades={"account": [drop_openings_double_deposits]})

    stream = store.open("account", "a1")
    assert [(e.event_number, e.content) async for e in stream.all()] == [(2, Deposited(amount=10))]
    assert stream.position == 2
    await stream.write(Deposited(amount=1))
    assert [e.event_number async for e in store.read("account", "a1", 2)] == [3]


async def test_bad_input_is_refused_with_the_errors_of_the_sync_store(stores: Stores) -> None:
    class Unregistered(Content):
        pass

    store = stores.async_store
    with pytest.raises(NotRegisteredError):
        await store.open("account", "a1").write(Unregistered())
    with pytest.raises(InvalidNameError):
        store.open("account", "")
    with pytest.raises(InvalidNameError):
        store.open("9account", "a1")
    with pytest.raises(InvalidMetadataError):
        await store.open("account", "a1").write(Opened(owner="a"), metadata={"bad key": "x"})

    assert await events_of(store) == []
    assert await store.entity_ids("account") == ([], None)


async def test_metadata_is_stored_with_the_events_as_through_a_store(stores: Stores) -> None:
    await stores.async_store.open("account", "a1").write(
        Opened(owner="ann"), Deposited(amount=1), metadata={"user": "ann"}
    )

    events = await events_of(stores.async_store)
    assert [dict(e.metadata) for e in events] == [{"user": "ann"}] * 2
    assert list(stores.store.read("account", "a1")) == events


async def test_an_async_store_and_a_store_of_the_same_data_see_the_same_events(
    stores: Stores,
) -> None:
    await stores.async_store.open("account", "a1").write(Opened(owner="ann"))
    with stores.store.open("account", "a1") as stream:
        assert [e.content for e in stream.all()] == [Opened(owner="ann")]
        stream.write(Deposited(amount=5))
    await stores.async_store.open_from("account", "a1", 2).write()  # nothing to write: no-op

    from_async = await events_of(stores.async_store)
    from_sync = list(stores.store.read("account", "a1"))
    assert from_async == from_sync
    assert [e.event_number for e in from_async] == [1, 2]
    assert await stores.async_store.entity_ids("account") == stores.store.entity_ids("account")


async def append_with_retry(store: AsyncStore, entity_id: str, amount: int) -> int:
    """Appends one deposit at the entity's head, re-reading after each conflict; returns
    the number of conflicts."""
    conflicts = 0
    while True:
        stream = store.open("account", entity_id)
        async for _ in stream.all():
            pass
        try:
            await stream.write(Deposited(amount=amount))
            return conflicts
        except ConcurrencyError:
            conflicts += 1


async def test_100_concurrent_tasks_on_5_entities_append_contiguously_once_each(
    stores: Stores,
) -> None:
    store = stores.async_store
    entity_ids = [f"acc-{n}" for n in range(5)]

    conflicts = await asyncio.gather(
        *(append_with_retry(store, entity_ids[task % 5], task) for task in range(100))
    )

    amounts: list[int] = []
    for entity_id in entity_ids:
        events = await events_of(store, entity_id)
        assert [e.event_number for e in events] == list(range(1, 21)), entity_id
        amounts += [e.content.amount for e in events if isinstance(e.content, Deposited)]
    assert sorted(amounts) == list(range(100))  # every task once, none twice
    if stores.kind != "memory":  # the in-memory storage never yields mid-write
        assert sum(conflicts) > 0, "the tasks never raced"


async def test_a_sync_writer_and_an_async_writer_racing_on_one_entity_interleave_cleanly(
    stores: Stores,
) -> None:
    def write_sync(count: int) -> None:
        for n in range(count):
            while True:
                with stores.store.open("account", "a1") as stream:
                    for _ in stream.all():
                        pass
                    try:
                        stream.write(Deposited(amount=1000 + n))
                        break
                    except ConcurrencyError:
                        continue

    async def write_async(count: int) -> None:
        for n in range(count):
            await append_with_retry(stores.async_store, "a1", n)

    await asyncio.gather(asyncio.to_thread(write_sync, 50), write_async(50))

    events = await events_of(stores.async_store)
    assert [e.event_number for e in events] == list(range(1, 101))
    amounts = [e.content.amount for e in events if isinstance(e.content, Deposited)]
    assert sorted(amounts) == [*range(50), *range(1000, 1050)]
    assert [a for a in amounts if a < 1000] == list(range(50))  # each writer's order kept


@pytest.mark.parametrize("kind", ["fakeredis", "redis"])
async def test_a_corrupt_entry_is_reported_with_its_key_and_event_number(kind: str) -> None:
    client = async_client(kind, REDIS_URL)
    if kind == "redis":
        real_redis().close()
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    storage = AsyncRedisStorage(client, prefix=prefix)
    store = AsyncStore(storage, events=ACCOUNT_EVENTS)
    try:
        await store.open("account", "a1").write(Opened(owner="a"))
        key = (await storage.open()).stream("account", "a1")
        await client.xadd(key, {"n": "Deposited", "d": "{}", "t": "x", "e": "id"}, id="2-0")

        with pytest.raises(CorruptEventError) as caught:
            await events_of(store)
        assert (caught.value.key, caught.value.event_number) == (key, 2)
    finally:
        async for found in client.scan_iter(f"{prefix}:*"):
            await client.delete(found)
        await store.close()


async def test_the_number_of_partitions_of_a_prefix_cannot_change() -> None:
    server = fakeredis.FakeServer(version=(7, 0))
    RedisStorage(fakeredis.FakeRedis(server=server), prefix="p", partitions=4)

    assert (await AsyncRedisStorage(fakeredis.FakeAsyncRedis(server=server), prefix="p")
            .open()).partitions == 4
    with pytest.raises(ConfigurationError, match="4 partitions"):
        await AsyncRedisStorage(fakeredis.FakeAsyncRedis(server=server), prefix="p",
                                partitions=8).open()
    with pytest.raises(ConfigurationError):
        AsyncRedisStorage(fakeredis.FakeAsyncRedis(server=server), prefix="bad prefix")


async def test_from_settings_reaches_the_redis_the_settings_name() -> None:
    sync_client = real_redis()
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    settings = Settings(redis_url=REDIS_URL, prefix=prefix)
    try:
        async with AsyncStore.from_settings(events=ACCOUNT_EVENTS, settings=settings) as store:
            await store.open("account", "a1").write(Opened(owner="ann"))
        sync = Store(RedisStorage(sync_client, prefix=prefix), events=ACCOUNT_EVENTS)
        assert [e.content for e in sync.read("account", "a1")] == [Opened(owner="ann")]
    finally:
        delete_prefix(sync_client, prefix)
        sync_client.close()


async def test_concurrent_appends_reload_a_script_the_server_forgot() -> None:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7, 0)))
    store = AsyncStore(AsyncRedisStorage(client, prefix="p"), events=ACCOUNT_EVENTS)
    await store.open("account", "a0").write(Opened(owner="a"))
    await client.script_flush()

    await asyncio.gather(
        *(store.open("account", f"a{n}").write(Opened(owner="a")) for n in range(1, 11))
    )

    assert len((await store.entity_ids("account"))[0]) == 11
    await store.close()


async def test_a_server_gone_fails_each_write_of_a_batch_and_stores_nothing() -> None:
    server = fakeredis.FakeServer(version=(7, 0))
    store = AsyncStore(AsyncRedisStorage(fakeredis.FakeAsyncRedis(server=server), prefix="p"),
                       events=ACCOUNT_EVENTS)
    await store.open("account", "a0").write(Opened(owner="a"))  # partitions read
    server.connected = False

    outcomes = await asyncio.gather(
        *(store.open("account", f"a{n}").write(Opened(owner="a")) for n in range(1, 6)),
        return_exceptions=True,
    )

    assert all(isinstance(outcome, StorageUnavailableError) and outcome.outcome_unknown
               and isinstance(outcome.cause, redis.ConnectionError)
               for outcome in outcomes), outcomes
    server.connected = True
    assert await store.entity_ids("account") == (["a0"], None)
    await store.open("account", "a1").write(Opened(owner="a"))  # the storage goes on
    assert await store.entity_ids("account") == (["a0", "a1"], None)
    await store.close()


async def test_without_a_redis_url_both_stores_share_the_embedded_redis() -> None:
    settings = Settings(redis_url=None, prefix=f"t-{uuid.uuid4().hex[:12]}")
    async with AsyncStore.from_settings(events=ACCOUNT_EVENTS, settings=settings) as store:
        await store.open("account", "a1").write(Opened(owner="ann"))
        assert store.subscriber_ids("account") == []

    sync = Store(RedisStorage(redis_client(settings), prefix=settings.prefix),
                 events=ACCOUNT_EVENTS)
    assert [e.content for e in sync.read("account", "a1")] == [Opened(owner="ann")]


async def test_batched_appends_are_retried_on_a_new_connection_once_theirs_is_cut() -> None:
    """The connection of concurrent appends dies (CLIENT KILL): the batch is sent again on
    a new one, as the client's retry policy says for any command (`from_url` gives none:
    this client is given one), and every append lands exactly once."""
    real_redis().close()
    name = f"t-{uuid.uuid4().hex[:12]}"
    client = redis.asyncio.Redis.from_url(REDIS_URL, client_name=name, retry=Retry(NoBackoff(), 3))
    store = AsyncStore(AsyncRedisStorage(client, prefix=name), events=ACCOUNT_EVENTS)
    admin_client = real_redis()
    try:
        streams = [store.open("account", f"a{n}") for n in range(10)]
        await asyncio.gather(*(stream.write(Opened(owner="a")) for stream in streams))
        ours = [c["id"] for c in admin_client.client_list() if c["name"] == name]
        assert ours, "the store's connections are named"
        for connection_id in ours:
            admin_client.client_kill_filter(_id=connection_id)

        await asyncio.gather(*(stream.write(Deposited(amount=1)) for stream in streams))

        for n in range(10):
            assert [e.event_number for e in await events_of(store, f"a{n}")] == [1, 2]
    finally:
        await store.close()
        delete_prefix(admin_client, name)
        admin_client.close()


# -- the log ---------------------------------------------------------------------------------


async def test_async_writes_return_positions_and_read_all_reads_as_the_sync_store(
        stores: Stores) -> None:
    written = []
    for entity_id in ("a1", "a2", "a3"):
        async with stores.async_store.open("account", entity_id) as stream:
            written += await stream.write(Opened(owner=entity_id), Deposited(amount=1))
    assert len(written) == 6
    assert all(b == Position(a.partition, a.number + 1) for a, b in zip(written[::2],
               written[1::2], strict=True))

    reading = stores.async_store.read_all()
    events = [event async for event in reading]
    assert [(e.entity_id, e.position) for e in events] == [
        (e.entity_id, e.position) for e in stores.store.read_all()]
    assert sorted(e.position for e in events) == sorted(written)  # type: ignore[type-var]
    rest = [e async for e in stores.async_store.read_all(after=reading.positions)]
    assert rest == []
    limited = [e async for e in stores.async_store.read_all(limit=2, entity_types=["account"])]
    assert len(limited) == 2


async def test_async_follow_yields_a_write_made_meanwhile_until_stopped(stores: Stores) -> None:
    async with stores.async_store.open("account", "a1") as stream:
        await stream.write(Opened(owner="a"))

    async def write_later() -> None:
        await asyncio.sleep(0.1)
        async with stores.async_store.open("account", "a2") as other:
            await other.write(Opened(owner="b"))

    seen = []
    writing = asyncio.create_task(write_later())
    async with stores.async_store.follow(name="ledger") as follower:
        async for event in follower:
            seen.append(event.entity_id)
            if len(seen) == 2:
                follower.stop()
    await writing
    assert seen == ["a1", "a2"]
    assert stores.store.storage.followed("ledger")  # type: ignore[attr-defined]
