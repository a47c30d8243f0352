"""The archive of old events in PostgreSQL: copied in batches, idempotent, removed from Redis
only once archived, and read back through transparently (the real PostgreSQL: see
archive_kit.py)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
import redis
from archive_kit import Proxy, archive_url, server_port  # noqa: F401  (a fixture)
from conftest import ACCOUNT_EVENTS, Deposited, Opened
from kit import wait_for
from prometheus_client import REGISTRY

from es_workers import (
    ArchiveUnavailableError,
    Event,
    HotWindow,
    RedisStorage,
    Store,
    TruncatedError,
)
from es_workers.postgres import PostgresArchive
from es_workers.postgres.schema import VERSION, table_name
from es_workers.redis.archiver import ENTRIES_PER_CALL, MARKS_PER_CALL

pytestmark = pytest.mark.single_redis


@pytest.fixture
def archive(archive_url: str, prefix: str) -> Iterator[PostgresArchive]:  # noqa: F811
    found = PostgresArchive(archive_url, prefix=prefix)
    found.init()
    yield found
    found.close()


@pytest.fixture
def archived_store(redis_client: redis.Redis, prefix: str,
                   archive: PostgresArchive) -> Callable[..., Store]:
    def build(**options: object) -> Store:
        options.setdefault("events", ACCOUNT_EVENTS)
        storage = RedisStorage(redis_client, prefix=prefix, archive=archive)
        return Store(storage, **options)  # type: ignore[arg-type]

    return build


def write_account(store: Store, entity_id: str, count: int, per_write: int = 3) -> None:
    with store.open("account", entity_id) as stream:
        list(stream.all())
        stream.write(Opened(owner=entity_id), metadata={"correlation_id": f"c-{entity_id}"})
    written = 1
    while written < count:
        with store.open_from("account", entity_id, written) as stream:
            list(stream.all())
            size = min(per_write, count - written)
            stream.write(*(Deposited(amount=written + i) for i in range(size)))
            written += size


def archive_and_scavenge(store: Store, window: HotWindow, batch: int = 7) -> None:
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    archiver = storage.archiver({}, window, batch=batch)
    archiver.run_once()
    archiver.release()
    store.scavenge()


def stored_in_redis(client: redis.Redis, store: Store, entity_id: str) -> list[int]:
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    key = storage.keys.stream("account", entity_id)
    return [int(entry_id.split(b"-")[0]) for entry_id, _ in client.xrange(key)]


def same(events: list[Event]) -> list[tuple[object, ...]]:
    return [(e.entity_id, e.event_number, e.event_time, e.content, e.store_event_id,
             e.store_entity_id, e.metadata, e.position) for e in events]


def test_init_creates_the_table_and_records_its_version_once(archive_url: str) -> None:  # noqa: F811
    archive = PostgresArchive(archive_url, prefix="shop.v1")
    assert archive.init() == 0
    assert archive.init() == VERSION  # already there: nothing applied again
    with psycopg.connect(archive_url) as connection:
        indexes = {row[0] for row in connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s", [table_name("shop.v1")])}
        versions = connection.execute("SELECT name, version FROM es_workers_schema").fetchall()
    assert any("(entity_type, entity_id, event_number)" in i for i in indexes)
    assert any("(partition, log_number)" in i for i in indexes)
    assert versions == [(table_name("shop.v1"), VERSION)]
    archive.close()


def test_an_archive_without_its_table_names_the_command_that_creates_it(
        archive_url: str) -> None:  # noqa: F811
    from es_workers import ConfigurationError

    archive = PostgresArchive(archive_url, prefix="nothing-here")
    with pytest.raises(ConfigurationError, match="es-workers archive APP --init"):
        archive.counts()
    archive.close()


def test_archived_events_read_the_same_once_removed_from_redis(
        archived_store: Callable[..., Store], redis_client: redis.Redis) -> None:
    store = archived_store()
    write_account(store, "a1", 40)
    write_account(store, "a2", 5)
    before = {i: list(store.read("account", i)) for i in ("a1", "a2")}
    log_before = list(store.read_all())

    archive_and_scavenge(store, HotWindow(events=10))

    assert stored_in_redis(redis_client, store, "a1") == list(range(31, 41))
    assert stored_in_redis(redis_client, store, "a2") == [1, 2, 3, 4, 5]  # all hot
    with store.open("account", "a1") as stream:
        assert same(list(stream.all())) == same(before["a1"])
    assert same(list(store.read("account", "a2"))) == same(before["a2"])
    with store.open_from("account", "a1", 12) as stream:  # from inside the archived range
        assert same(list(stream.all())) == same(before["a1"][12:])
    assert same(list(store.read_all())) == same(log_before)
    seen: list[int] = []
    store.project("account", "a1", lambda event: seen.append(event.event_number))
    assert seen == list(range(1, 41))


def test_an_entity_entirely_archived_reads_the_same_and_takes_writes(
        archived_store: Callable[..., Store], redis_client: redis.Redis) -> None:
    store = archived_store()
    write_account(store, "a1", 2500, per_write=50)  # more than one read page each way
    before = list(store.read("account", "a1"))

    archive_and_scavenge(store, HotWindow(events=0), batch=1000)

    assert stored_in_redis(redis_client, store, "a1") == []
    assert same(list(store.read("account", "a1"))) == same(before)
    with store.open("account", "a1") as stream:
        assert len(list(stream.all())) == 2500
        stream.write(Deposited(amount=1))  # numbering and the optimistic check go on
    assert [e.event_number for e in store.read("account", "a1", 2498)] == [2499, 2500, 2501]
    assert store.read("account", "a1", 2499).__next__().store_entity_id == before[0].store_event_id


def test_upgrades_apply_to_archived_events_as_to_hot_ones(
        archived_store: Callable[..., Store]) -> None:
    def doubled(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event.content, Deposited):
                event = replace(event, content=Deposited(amount=event.content.amount * 2))
            yield event

    store = archived_store(upgrades={"account": [doubled]})
    write_account(store, "a1", 20)
    before = [e.content for e in store.read("account", "a1")]
    archive_and_scavenge(store, HotWindow(events=5))
    assert [e.content for e in store.read("account", "a1")] == before


def test_archiving_twice_stores_each_event_once(
        archived_store: Callable[..., Store], archive: PostgresArchive) -> None:
    store = archived_store()
    write_account(store, "a1", 30)
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    counted = REGISTRY.get_sample_value("es_archived_total", {"entity_type": "account"}) or 0
    archiver = storage.archiver({}, HotWindow(events=10))
    first = archiver.run_once()
    archiver.release()
    # As an archiver killed after its insert and before its marks moved: copied again.
    storage.client.delete(storage.keys.archived("account", storage.keys.partition(
        "account", "a1")))
    again_archiver = storage.archiver({}, HotWindow(events=10))
    again = again_archiver.run_once()
    assert (first.events, again.events, again.entities) == (20, 0, 1)  # copied, not stored
    assert REGISTRY.get_sample_value("es_archived_total",
                                     {"entity_type": "account"}) == counted + 20
    assert archive.counts() == {"account": (20, pytest.approx(archive.counts()["account"][1]))}


def test_the_scavenger_never_removes_what_the_archive_has_not_confirmed(
        archived_store: Callable[..., Store], redis_client: redis.Redis) -> None:
    from es_workers import Retention

    store = archived_store(retention={"account": Retention(max_count=5)})
    write_account(store, "a1", 30)
    store.scavenge()  # retention truncates to 26.., but nothing is archived yet
    assert stored_in_redis(redis_client, store, "a1") == list(range(1, 31))
    with pytest.raises(TruncatedError):
        list(store.read("account", "a1"))
    archive_and_scavenge(store, HotWindow(events=20))
    assert stored_in_redis(redis_client, store, "a1") == list(range(11, 31))


def test_the_hot_window_per_entity_type_wins_over_the_default(
        archived_store: Callable[..., Store], redis_client: redis.Redis) -> None:
    store = archived_store()
    write_account(store, "a1", 30)
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    storage.archiver({"account": HotWindow(events=25)}, HotWindow(events=3)).run_once()
    store.scavenge()
    assert stored_in_redis(redis_client, store, "a1") == list(range(6, 31))


def test_an_age_window_archives_older_events_but_keeps_the_newest(
        archived_store: Callable[..., Store], redis_client: redis.Redis) -> None:
    store = archived_store()
    write_account(store, "a1", 10)
    archive_and_scavenge(store, HotWindow(age=timedelta(microseconds=1)))
    assert stored_in_redis(redis_client, store, "a1") == [10]  # the newest event
    assert [e.event_number for e in store.read("account", "a1")] == list(range(1, 11))


def test_without_postgresql_an_archived_read_fails_naming_it_and_hot_reads_work(
        redis_client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    proxy = Proxy(server_port(archive_url))
    archive = PostgresArchive(proxy.url(archive_url), prefix=prefix, connect_timeout_s=2)
    archive.init()
    store = Store(RedisStorage(redis_client, prefix=prefix, archive=archive),
                  events=ACCOUNT_EVENTS)
    write_account(store, "a1", 30)
    archive_and_scavenge(store, HotWindow(events=10))
    assert len(list(store.read("account", "a1"))) == 30

    proxy.close()
    with pytest.raises(ArchiveUnavailableError) as raised:
        list(store.read("account", "a1"))
    assert "archive" in str(raised.value) and f":{proxy.port}/" in str(raised.value)
    with pytest.raises(ArchiveUnavailableError):
        list(store.read_all())
    from es_workers import admin

    [row] = admin.status(store).archive  # the rest of the status still shows
    assert (row.archived_events, row.archived_marked) == (None, 20)
    assert row.error is not None and "archive" in row.error
    # What is still hot reads without the archive, and writes go on.
    assert [e.event_number for e in store.read("account", "a1", 25)] == list(range(26, 31))
    with store.open_from("account", "a1", 30) as stream:
        list(stream.all())
        stream.write(Deposited(amount=1))
    archive.close()


def test_the_archive_url_password_is_never_shown(archive_url: str) -> None:  # noqa: F811
    from es_workers import Settings

    url = archive_url.replace("postgres@", "postgres:s3cret-pw@")
    settings = Settings(archive_url=url)
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings.shown())
    archive = PostgresArchive(url.replace(":5432", ":1"), connect_timeout_s=1)
    with pytest.raises(ArchiveUnavailableError) as raised:
        archive.counts()
    assert "s3cret-pw" not in str(raised.value)


def test_a_subscriber_added_after_archiving_is_handed_the_archived_history_first(
        redis_client: redis.Redis, prefix: str, archive: PostgresArchive,
        broker: dramatiq.Broker) -> None:
    from apps.delivery_kit import FAST_PUBLISHER, Delivery, Recorder

    storage = RedisStorage(redis_client, prefix=prefix, publisher=FAST_PUBLISHER,
                           archive=archive)
    store = Store(storage, events=ACCOUNT_EVENTS)
    write_account(store, "a1", 30)
    archive_and_scavenge(store, HotWindow(events=5))
    assert stored_in_redis(redis_client, store, "a1") == list(range(26, 31))
    before = list(store.read("account", "a1"))

    delivery = Delivery(storage, broker, events=ACCOUNT_EVENTS)
    late = Recorder()
    delivery.store.subscribe("account", "late", late)
    delivery.start_worker()
    delivery.start_publisher()
    try:
        with delivery.store.open_from("account", "a1", 30) as stream:
            list(stream.all())
            stream.write(Deposited(amount=31))
        delivery.store.wait_for("account", "a1", 31, timeout=30)
    finally:
        delivery.stop()
    assert [n for _, n in late.calls] == list(range(1, 32))
    assert late.contents["a1"][:30] == [e.content for e in before]


@pytest.mark.anyio
async def test_an_async_store_reads_archived_events_through_the_archive(
        archive_url: str) -> None:  # noqa: F811
    import redis.asyncio
    from conftest import REDIS_URL, delete_prefix, real_redis

    from es_workers import AsyncRedisStorage, AsyncStore
    from es_workers.postgres import AsyncPostgresArchive

    client, prefix = real_redis(), f"t-{uuid.uuid4().hex[:12]}"
    proxy = Proxy(server_port(archive_url))
    archive = PostgresArchive(archive_url, prefix=prefix)
    archive.init()
    try:
        store = Store(RedisStorage(client, prefix=prefix, archive=archive),
                      events=ACCOUNT_EVENTS)
        write_account(store, "a1", 30)
        archive_and_scavenge(store, HotWindow(events=10))
        before = list(store.read("account", "a1"))
        log_before = list(store.read_all())
        async_archive = AsyncPostgresArchive(proxy.url(archive_url), prefix=prefix,
                                             connect_timeout_s=2)
        async_store = AsyncStore(AsyncRedisStorage(
            redis.asyncio.Redis.from_url(REDIS_URL), prefix=prefix, archive=async_archive),
            events=ACCOUNT_EVENTS)
        async with async_store.open("account", "a1") as stream:
            assert same([e async for e in stream.all()]) == same(before)
        assert same([e async for e in async_store.read_all()]) == same(log_before)

        proxy.close()
        with pytest.raises(ArchiveUnavailableError):
            [e async for e in async_store.read_all()]
        with pytest.raises(ArchiveUnavailableError, match="archive"):
            async with async_store.open("account", "a1") as stream:
                [e async for e in stream.all()]
        async with async_store.open_from("account", "a1", 25) as stream:  # hot: no archive
            assert [e.event_number async for e in stream.all()] == list(range(26, 31))
        await async_archive.close()
        await async_store.close()
    finally:
        archive.close()
        delete_prefix(client, prefix)


def test_a_tombstoned_entity_is_removed_from_redis_and_from_the_archive(
        archived_store: Callable[..., Store], redis_client: redis.Redis,
        archive: PostgresArchive) -> None:
    from es_workers import StreamDeletedError

    store = archived_store()
    write_account(store, "a1", 30)
    archive_and_scavenge(store, HotWindow(events=10))
    write_account(store, "a2", 30)
    archive_and_scavenge(store, HotWindow(events=10))
    store.tombstone("account", "a1")
    archive_and_scavenge(store, HotWindow(events=10))  # the tombstone reaches the archive
    assert stored_in_redis(redis_client, store, "a1") == []
    with pytest.raises(StreamDeletedError):
        list(store.read("account", "a1"))
    assert archive.counts()["account"][0] == 20  # a2's
    assert store.storage.archived_marks("account") == {"a2": 20}  # type: ignore[attr-defined]


def test_an_archiver_goes_on_once_postgresql_is_back_and_nothing_leaves_redis_before(
        redis_client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    import threading

    from kit import wait_for

    proxy = Proxy(server_port(archive_url))
    archive = PostgresArchive(proxy.url(archive_url), prefix=prefix, connect_timeout_s=2)
    archive.init()
    storage = RedisStorage(redis_client, prefix=prefix, archive=archive)
    store = Store(storage, events=ACCOUNT_EVENTS)
    write_account(store, "a1", 30)
    archiver = storage.archiver({}, HotWindow(events=10), batch=5)

    proxy.close()  # PostgreSQL unreachable while archiving
    with pytest.raises(ArchiveUnavailableError):
        archiver.run_once()
    store.scavenge()
    assert storage.archived_marks("account") == {}
    assert stored_in_redis(redis_client, store, "a1") == list(range(1, 31))

    stop = threading.Event()
    running = threading.Thread(target=archiver.run, args=(stop,),
                               kwargs={"idle_s": 0.05, "max_backoff_s": 0.2})
    running.start()
    try:
        proxy.reopen()
        wait_for(lambda: storage.archived_marks("account") == {"a1": 20}, "the archiver")
    finally:
        stop.set()
        running.join(timeout=30)
    store.scavenge()
    assert stored_in_redis(redis_client, store, "a1") == list(range(21, 31))
    assert [e.event_number for e in store.read("account", "a1")] == list(range(1, 31))
    archive.close()


def test_archivers_share_the_partitions_by_leases(
        archived_store: Callable[..., Store]) -> None:
    store = archived_store()
    write_account(store, "a1", 30)
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    first = storage.archiver({}, HotWindow(events=25), lease_ms=60_000)
    second = storage.archiver({}, HotWindow(events=10), lease_ms=60_000)
    assert first.run_once().events == 5
    assert second.run_once().events == 0  # every partition is the first one's
    assert storage.archived_marks("account") == {"a1": 5}
    first.release()
    assert second.run_once().events == 15
    assert storage.archived_marks("account") == {"a1": 20}
    second.release()


def test_a_deleted_entity_reads_empty_also_from_the_archive_and_its_events_go_once_archived(
        archived_store: Callable[..., Store], redis_client: redis.Redis,
        archive: PostgresArchive) -> None:
    store = archived_store()
    write_account(store, "a1", 30)
    archive_and_scavenge(store, HotWindow(events=10))
    assert stored_in_redis(redis_client, store, "a1") == list(range(21, 31))  # 1..20 archived
    store.delete("account", "a1")
    assert list(store.read("account", "a1")) == []
    with store.open_from("account", "a1", 3) as stream:  # from before the deleted ones
        assert list(stream.all()) == []
    # The scavenger removes a deleted entity's events only once archived (and handled):
    # 21..30 are past its mark, so they stay.
    store.scavenge()
    assert stored_in_redis(redis_client, store, "a1") == list(range(21, 31))
    archive_and_scavenge(store, HotWindow(events=0))
    assert stored_in_redis(redis_client, store, "a1") == []
    assert archive.counts()["account"][0] == 30  # a delete keeps the archived rows...
    assert list(store.read("account", "a1")) == []  # ...which reads never show again
    with store.open("account", "a1") as stream:  # a later write goes on after them
        assert list(stream.all()) == []
        stream.write(Deposited(amount=99))
    archive_and_scavenge(store, HotWindow(events=0))
    assert stored_in_redis(redis_client, store, "a1") == []  # 31 too is archived
    assert [(e.event_number, e.content) for e in store.read("account", "a1")] == [
        (31, Deposited(amount=99))]
    assert store.storage.archived_marks("account") == {"a1": 31}  # type: ignore[attr-defined]


def test_the_archive_holds_the_scavenger_back_as_a_keep_bound(
        archived_store: Callable[..., Store], redis_client: redis.Redis) -> None:
    from es_workers.redis.archiver import ArchiveBound

    store = archived_store()
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    bounds = [b for b in storage.keep_bounds if isinstance(b, ArchiveBound)]
    assert len(bounds) == 1
    write_account(store, "a1", 30)
    write_account(store, "a2", 5)
    assert list(bounds[0].first_needed("account", ["a1", "a2"])) == [1, 1]
    archive_and_scavenge(store, HotWindow(events=10))
    assert list(bounds[0].first_needed("account", ["a1", "a2"])) == [21, 1]
    store.tombstone("account", "a2")  # needs nothing: deleted for good
    assert list(bounds[0].first_needed("account", ["a1", "a2"])) == [21, 6]
    # Another bound (say a second consumer of the events) holds back with the archive.
    storage.keep_bounds.append(Holding(3))
    archive_and_scavenge(store, HotWindow(events=0))
    assert stored_in_redis(redis_client, store, "a1") == list(range(21, 31))  # all archived
    assert stored_in_redis(redis_client, store, "a2") == list(range(3, 6))  # tombstoned
    storage.keep_bounds.pop()
    store.scavenge()
    assert stored_in_redis(redis_client, store, "a1") == []
    assert stored_in_redis(redis_client, store, "a2") == []


class Holding:
    """A KeepBound that needs every event from `first` on."""

    def __init__(self, first: int) -> None:
        self.first = first

    def first_needed(self, entity_type: str, entity_ids: Sequence[str]) -> list[int]:
        return [self.first for _ in entity_ids]


@pytest.mark.anyio
async def test_an_async_read_of_a_deleted_entity_shows_none_of_its_archived_events(
        archive_url: str) -> None:  # noqa: F811
    import redis.asyncio
    from conftest import REDIS_URL, delete_prefix, real_redis

    from es_workers import AsyncRedisStorage, AsyncStore
    from es_workers.postgres import AsyncPostgresArchive

    client, prefix = real_redis(), f"t-{uuid.uuid4().hex[:12]}"
    archive = PostgresArchive(archive_url, prefix=prefix)
    archive.init()
    try:
        store = Store(RedisStorage(client, prefix=prefix, archive=archive),
                      events=ACCOUNT_EVENTS)
        write_account(store, "a1", 30)
        store.delete("account", "a1")
        with store.open("account", "a1") as stream:
            list(stream.all())
            stream.write(Deposited(amount=99))
        archive_and_scavenge(store, HotWindow(events=0))  # all 31 archived, none in Redis
        async_archive = AsyncPostgresArchive(archive_url, prefix=prefix)
        async_store = AsyncStore(AsyncRedisStorage(
            redis.asyncio.Redis.from_url(REDIS_URL), prefix=prefix, archive=async_archive),
            events=ACCOUNT_EVENTS)
        async with async_store.open("account", "a1") as stream:
            assert [e.event_number async for e in stream.all()] == [31]
        async with async_store.open_from("account", "a1", 4) as stream:
            assert [e.event_number async for e in stream.all()] == [31]
        assert [e.event_number for e in store.read("account", "a1")] == [31]
        await async_archive.close()
        await async_store.close()
    finally:
        archive.close()
        delete_prefix(client, prefix)


def test_status_counts_what_a_scavenge_would_free_as_the_archive_allows(
        archived_store: Callable[..., Store]) -> None:
    from es_workers import Retention

    store = archived_store(retention={"account": Retention(max_count=5)})
    write_account(store, "a1", 30)
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    store.scavenge()  # truncated to 26.., nothing archived: nothing may go
    assert storage.footprint("account", []).removable_events == 0
    archiver = storage.archiver({}, HotWindow(events=10), batch=7)
    archiver.run_once()
    archiver.release()
    assert storage.footprint("account", []).removable_events == 20  # up to the mark
    store.scavenge()
    assert storage.footprint("account", []).removable_events == 0


def test_status_shows_the_archive_lag_and_how_old_its_oldest_event_is(
        archived_store: Callable[..., Store]) -> None:
    from es_workers import admin

    store = archived_store(archive={"account": HotWindow(events=10)})
    started = time.time()
    write_account(store, "a1", 12)  # events 1 and 2 past the window of 10
    first_written = time.time()
    time.sleep(0.3)  # events 3..20, also past the window, are younger than 1 and 2
    with store.open_from("account", "a1", 12) as stream:
        list(stream.all())
        stream.write(*(Deposited(amount=n) for n in range(18)))  # 13..30
    checked = time.time()
    [row] = admin.status(store).archive
    assert (row.lag, row.archived_marked) == (20, 0)
    # The oldest of the lag is event 1, written between `started` and `first_written`.
    assert row.lag_age_s is not None
    assert checked - first_written <= row.lag_age_s <= time.time() - started

    storage = store.storage
    assert isinstance(storage, RedisStorage)
    archiver = storage.archiver(store.hot_windows, storage.hot_window, batch=7)
    archiver.run_once()
    archiver.release()
    [row] = admin.status(store).archive
    assert (row.lag, row.lag_age_s, row.archived_marked) == (0, None, 20)


def test_the_archiver_reports_what_each_pass_found_past_the_window(
        archived_store: Callable[..., Store]) -> None:
    store = archived_store(events={"account": ACCOUNT_EVENTS["account"],
                                   "ledger": ACCOUNT_EVENTS["account"]})
    started = time.time()
    write_account(store, "a1", 30)
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    archiver = storage.archiver({}, HotWindow(events=10), batch=7)
    archiver.run_once()

    def gauge(name: str, entity_type: str = "account") -> float | None:
        return REGISTRY.get_sample_value(name, {"entity_type": entity_type})

    assert archiver.lag["account"].events == 20
    assert gauge("es_archive_lag_events") == 20
    assert 0 < gauge("es_archive_lag_seconds") <= time.time() - started  # type: ignore[operator]
    assert gauge("es_archive_lag_events", "ledger") == 0  # exported at 0, as counters are
    archiver.run_once()  # nothing left past the window
    assert (gauge("es_archive_lag_events"), gauge("es_archive_lag_seconds")) == (0, 0)
    archiver.release()


def test_the_dashboard_shows_the_archive_and_its_lag(
        archived_store: Callable[..., Store]) -> None:
    from starlette.testclient import TestClient

    from es_workers.dashboard.app import create_app

    store = archived_store(archive={"account": HotWindow(events=10)})
    write_account(store, "a1", 30)
    write_account(store, "a2", 5)
    client = TestClient(create_app(store, sample_every=0.05))
    html = client.get("/").text
    row = re.search(r'<table id="archive">.*?<tr data-entity-type="account">(.*?)</tr>', html,
                    re.DOTALL)
    assert row, html
    assert 'class="n marked">0<' in row.group(1)
    assert 'class="n lag warn">20<' in row.group(1)
    assert re.search(r'class="n lag-age">\d+\.\d s<', row.group(1))
    assert 'class="n stored">0<' in row.group(1)
    [found] = client.get("/api/status").json()["archive"]
    assert (found["lag"], found["lag_age_s"] > 0) == (20, True)

    storage = store.storage
    assert isinstance(storage, RedisStorage)
    archiver = storage.archiver(store.hot_windows, storage.hot_window)
    archiver.run_once()
    archiver.release()

    def archive_row() -> str:
        html = client.get("/fragments/overview", headers={"HX-Request": "true"}).text
        found = re.search(r'<table id="archive">.*?<tr data-entity-type="account">(.*?)</tr>',
                          html, re.DOTALL)
        assert found, html
        return found.group(1)

    # The overview is sampled every 0.05 s: a fragment asked sooner shows the last sample.
    wait_for(lambda: 'class="n lag ">0<' in archive_row(), "the overview to show the lag gone",
             timeout=10)
    caught_up = archive_row()
    assert 'class="n lag ">0<' in caught_up and 'class="n lag-age">-<' in caught_up
    assert 'class="n stored">20<' in caught_up
    assert re.search(r'class="n stored-bytes">\d+ B<', caught_up)


def test_forget_reaches_archived_events_they_read_with_placeholders(
        redis_client: redis.Redis, prefix: str, archive: PostgresArchive,
        archive_url: str) -> None:  # noqa: F811
    from typing import Annotated

    from es_workers import Content, MasterKeys, Personal
    from es_workers.encryption import new_master_key
    from es_workers.personal import FORGOTTEN_TEXT

    class Moved(Content):
        personal_subject = "customer_id"
        customer_id: str
        street: Annotated[str, Personal]
        floor: int

    street = "12 Analytical Engine Row"
    store = Store(RedisStorage(redis_client, prefix=prefix, archive=archive,
                               encryption=MasterKeys(new_master_key())),
                  events={"customer": [Moved]})
    with store.open("customer", "c1") as stream:
        stream.write(*(Moved(customer_id="c1", street=f"{street} {n}", floor=n)
                       for n in range(12)))
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    archiver = storage.archiver({}, HotWindow(events=2))
    archiver.run_once()
    archiver.release()
    store.scavenge()
    hot = redis_client.xrange(storage.keys.stream("customer", "c1"))
    assert [entry_id for entry_id, _ in hot] == [b"11-0", b"12-0"]
    assert [e.content.street for e in store.read("customer", "c1")][:2] == [  # type: ignore[attr-defined]
        f"{street} 0", f"{street} 1"]  # read back from the archive, decrypted
    with psycopg.connect(archive_url) as connection:
        rows = connection.execute(f'SELECT data FROM "{table_name(prefix)}"').fetchall()
    assert len(rows) == 10 and not any(street.encode() in bytes(data) for data, in rows)

    assert store.forget("c1") == 1
    events = list(store.read("customer", "c1"))
    assert [e.event_number for e in events] == list(range(1, 13))
    assert all(e.forgotten and e.content.street == FORGOTTEN_TEXT  # type: ignore[attr-defined]
               for e in events)
    assert [e.content.floor for e in events] == list(range(12))  # type: ignore[attr-defined]


class Recording(redis.Redis):
    """A client that notes the commands it sends."""

    sent: list[tuple[Any, ...]]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(args)
        return super().execute_command(*args, **options)


def test_no_call_of_the_archiver_holds_redis_for_a_whole_batch(
        redis_client: redis.Redis, prefix: str, archive: PostgresArchive) -> None:
    """A batch of more entities than one archived.lua call takes (one partition), and an
    entity with more events to archive than one XRANGE reads: every mark moves, in bounded
    calls."""
    store = Store(RedisStorage(redis_client, prefix=prefix, partitions=1, archive=archive),
                  events=ACCOUNT_EVENTS)  # type: ignore[arg-type]
    for n in range(MARKS_PER_CALL + 50):
        write_account(store, f"a{n}", 2)
    write_account(store, "long", ENTRIES_PER_CALL * 2 + 1, per_write=100)
    client = Recording(connection_pool=redis_client.connection_pool)
    client.sent = []
    storage = RedisStorage(client, prefix=prefix, partitions=1, archive=archive)
    Store(storage, events=ACCOUNT_EVENTS)  # type: ignore[arg-type]  (its entity types)
    archiver = storage.archiver({}, HotWindow(events=1), batch=10_000)

    done = archiver.run_once()

    assert (done.events, done.entities) == (MARKS_PER_CALL + 50 + ENTRIES_PER_CALL * 2,
                                            MARKS_PER_CALL + 51)
    assert storage.archived_marks("account") == {
        **{f"a{n}": 1 for n in range(MARKS_PER_CALL + 50)}, "long": ENTRIES_PER_CALL * 2}
    counts = [int(args[5]) for args in client.sent if args[0] == "XRANGE" and len(args) > 4]
    marks = [(len(args) - 4) // 3 for args in client.sent if args[0] == "EVALSHA"]
    assert max(counts) == ENTRIES_PER_CALL and max(marks) == MARKS_PER_CALL


def test_an_archiver_that_keeps_up_spreads_its_pass_and_one_behind_does_not(
        archived_store: Callable[..., Store]) -> None:
    store = archived_store()
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    for n in range(20):
        write_account(store, f"a{n}", 10)
    archiver = storage.archiver({}, HotWindow(events=5), batch=50)
    rests: list[float] = []

    assert archiver.run_once(rest=rests.append).events == 100  # its first pass: catching up
    assert archiver.run_once(rest=rests.append).events == 0  # its pass after a backlog
    assert rests == []
    for n in range(3):  # less than a batch: it keeps up, so it rests after each partition
        write_account(store, f"b{n}", 6)
    assert archiver.run_once(rest=rests.append).events == 3
    assert len(rests) == storage.partitions and all(seconds > 0 for seconds in rests)

    rests.clear()
    for n in range(20):  # a batch and more: no rest once this pass archived a batch
        write_account(store, f"c{n}", 10)
    assert archiver.run_once(rest=rests.append).events == 100
    assert len(rests) < storage.partitions
    rests.clear()
    archiver.release()
    paceless = storage.archiver({}, HotWindow(events=5), batch=50, pace=0)
    for _ in range(2):
        paceless.run_once(rest=rests.append)
    write_account(store, "d", 6)
    assert paceless.run_once(rest=rests.append).events == 1 and rests == []
    paceless.release()
