"""The eventsourcing recorders read through the archive: `es-workers archive` moves each
aggregate's events older than its hot window to PostgreSQL (`es_recorded_<prefix>`) and out
of Redis, and `select_events` / `select_notifications` return them, in order, before the
hot ones (real Redis and PostgreSQL: see archive_kit.py; each test has a prefix and a
database of its own, dropped after)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from archive_kit import Proxy, archive_url, server_port  # noqa: F401  (a fixture)
from conftest import REDIS_URL, delete_prefix, real_redis
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, ProcessRecorder, StoredEvent
from eventsourcing.tests import persistence as kit
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from es_workers import (
    ArchiveUnavailableError,
    HotWindow,
    RedisStorage,
    StorageUnavailableError,
    Store,
    admin,
)
from es_workers.admin import ArchiveStatus
from es_workers.cli import app as cli
from es_workers.postgres import PostgresArchive, PostgresRecordedArchive
from es_workers.postgres.schema import RECORDED
from es_workers.redis.archiver import Archived
from es_workers.redis.layouts import RECORDED_ARCHIVED, RECORDED_LOG_ARCHIVED
from es_workers.redis.recorder_archiver import RecordedRow, RecorderArchiver
from es_workers.redis.recorder_keys import ApplicationKeys, applications_key
from es_workers.redis.recorders import RedisApplicationRecorder, RedisProcessRecorder
from es_workers.redis.scripts import Script
from es_workers.wiring import recorded_archive

APP = "Ledger"
HERE = Path(__file__).parent


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    found = real_redis()
    yield found
    found.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    delete_prefix(client, name)


@pytest.fixture
def archive(archive_url: str, prefix: str) -> Iterator[PostgresRecordedArchive]:  # noqa: F811
    found = PostgresRecordedArchive(archive_url, prefix=prefix)
    found.init()
    yield found
    found.close()


def archiver(client: redis.Redis, prefix: str, archive: Any, keep: int,
             batch: int = 7) -> RecorderArchiver:
    return RecorderArchiver(client, prefix, archive, keep=keep, batch=batch)


def archive_once(client: redis.Redis, prefix: str, archive: Any, keep: int,
                 batch: int = 7) -> Archived:
    found = archiver(client, prefix, archive, keep, batch)
    done = found.run_once()
    found.release()
    return done


def recorder(client: redis.Redis, prefix: str, archive: Any = None) -> RedisApplicationRecorder:
    client.sadd(applications_key(prefix), APP)  # as the factory does
    return RedisApplicationRecorder(client, ApplicationKeys(prefix, APP), archive=archive)


def write_history(recording: RedisApplicationRecorder, originators: Sequence[uuid.UUID],
                  count: int) -> None:
    """`count` events of each originator, three per write, the writes interleaved; topics
    `a` and `b` in turn."""
    for first in range(1, count + 1, 3):
        for originator in originators:
            recording.insert_events([
                StoredEvent(originator, version, "a" if version % 2 else "b",
                            f"{originator}-{version}".encode())
                for version in range(first, min(first + 3, count + 1))])


def hot_versions(client: redis.Redis, prefix: str, originator: uuid.UUID) -> list[int]:
    key = ApplicationKeys(prefix, APP).aggregate("events", originator)
    return [int(entry_id.split(b"-")[0]) for entry_id, _ in client.xrange(key)]


def rows_in(url: str, prefix: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(
            f'SELECT application, purpose, originator_id, originator_uuid, version, topic, '
            f'state, notification_id FROM "{RECORDED.table(prefix)}" ORDER BY notification_id'
        ).fetchall()


def expected(events: list[StoredEvent], gt: int | None, lte: int | None, desc: bool,
             limit: int | None) -> list[StoredEvent]:
    found = [e for e in events if (gt is None or e.originator_version > gt)
             and (lte is None or e.originator_version <= lte)]
    found = found[::-1] if desc else found
    return found[:limit] if limit is not None else found


def test_select_events_reads_archived_events_before_hot_ones_in_every_range(
        client: redis.Redis, prefix: str, archive: PostgresRecordedArchive) -> None:
    recording = recorder(client, prefix, archive)
    first, second = uuid.uuid4(), uuid.uuid4()
    write_history(recording, [first, second], 30)
    recording.insert_events([StoredEvent(short := uuid.uuid4(), 1, "a", b"one")])
    written = {o: list(recording.select_events(o)) for o in (first, second, short)}

    done = archive_once(client, prefix, archive, keep=10)

    assert done.events == 40 + 11  # and the hot events the log's first 51 notifications name
    assert hot_versions(client, prefix, first) == list(range(21, 31))
    assert hot_versions(client, prefix, short) == [1]
    for originator, gt, lte, desc, limit in itertools.product(
            (first, second, short), (None, 0, 5, 19, 20, 25, 30), (None, 3, 20, 21, 29),
            (False, True), (None, 1, 5, 15, 40)):
        assert recording.select_events(originator, gt=gt, lte=lte, desc=desc,
                                       limit=limit) == expected(
            written[originator], gt, lte, desc, limit), (originator, gt, lte, desc, limit)


def test_on_a_redis_cluster_an_application_is_archived_and_read_through(
        redis_cluster: Any, archive_url: str) -> None:  # noqa: F811
    client, prefix = redis_cluster.client(), f"t-{uuid.uuid4().hex[:12]}"
    archive = PostgresRecordedArchive(archive_url, prefix=prefix)
    archive.init()
    try:
        recording = recorder(client, prefix, archive)
        originators = [uuid.uuid4(), uuid.uuid4()]
        write_history(recording, originators, 12)
        written = {o: list(recording.select_events(o)) for o in originators}
        notifications = recording.select_notifications(None, 100)

        assert archive_once(client, prefix, archive, keep=2).events == 20 + 2  # + the log's

        for originator in originators:
            assert hot_versions(client, prefix, originator) == [11, 12]
            assert recording.select_events(originator) == written[originator]
            assert recording.select_events(originator, gt=5, desc=True, limit=4) == written[
                originator][::-1][:4]
        assert recording.select_notifications(None, 100) == notifications
        recording.insert_events([StoredEvent(originators[0], 13, "a", b"13")])
    finally:
        archive.close()
        delete_prefix(client, prefix)
        client.close()


def test_select_notifications_reads_archived_events_in_order_before_hot_ones(
        client: redis.Redis, prefix: str, archive: PostgresRecordedArchive) -> None:
    recording = recorder(client, prefix, archive)
    write_history(recording, [uuid.uuid4(), uuid.uuid4(), uuid.uuid4()], 20)
    before = recording.select_notifications(None, 100)
    assert len(before) == 60

    archive_once(client, prefix, archive, keep=5)

    log = ApplicationKeys(prefix, APP).notifications()
    assert [int(entry_id.split(b"-")[0]) for entry_id, _ in client.xrange(log)] == list(
        range(56, 61))
    for start, limit, stop, topics in itertools.product(
            (None, 1, 7, 30, 45, 59), (1, 10, 100), (None, 8, 46), ((), ("a",), ("b", "c"))):
        want = [n for n in before if (start is None or n.id >= start)
                and (stop is None or n.id <= stop) and (not topics or n.topic in topics)]
        assert recording.select_notifications(start, limit, stop, topics) == want[:limit], (
            start, limit, stop, topics)
    assert recording.max_notification_id() == 60


def test_an_aggregate_archived_but_its_newest_still_refuses_a_lower_version(
        client: redis.Redis, prefix: str, archive: PostgresRecordedArchive) -> None:
    recording = recorder(client, prefix, archive)
    originator = uuid.uuid4()
    write_history(recording, [originator], 5)

    archive_once(client, prefix, archive, keep=0)  # ES_ARCHIVE_AFTER=0: the newest stays

    assert hot_versions(client, prefix, originator) == [5]
    assert client.xlen(ApplicationKeys(prefix, APP).notifications()) == 1
    for version in (3, 5):
        with pytest.raises(IntegrityError):
            recording.insert_events([StoredEvent(originator, version, "a", b"again")])
    recording.insert_events([StoredEvent(originator, 6, "b", b"six")])
    assert [e.originator_version for e in recording.select_events(originator)] == [
        1, 2, 3, 4, 5, 6]
    assert [(n.id, n.originator_version) for n in recording.select_notifications(None, 10)
            ] == [(v, v) for v in range(1, 7)]


def test_reads_while_an_archiver_moves_events_out_of_redis_see_every_event(
        client: redis.Redis, prefix: str, archive: PostgresRecordedArchive) -> None:
    recording = recorder(client, prefix, archive)
    originators = [uuid.uuid4() for _ in range(4)]
    write_history(recording, originators, 40)
    written = {o: list(recording.select_events(o)) for o in originators}
    notifications = recording.select_notifications(None, 200)
    stop = threading.Event()

    def archive_in_steps() -> None:  # small batches: the marks move between reads
        for keep in range(39, 0, -2):
            if stop.is_set():
                return
            archive_once(client, prefix, archive, keep=keep, batch=3)

    archiving = threading.Thread(target=archive_in_steps)
    archiving.start()
    try:
        while archiving.is_alive():
            for originator in originators:
                assert recording.select_events(originator) == written[originator]
                assert recording.select_events(originator, desc=True, limit=3) == written[
                    originator][::-1][:3]
                assert recording.select_events(originator, gt=30, limit=5) == written[
                    originator][30:35]
            assert recording.select_notifications(None, 200) == notifications
    finally:
        stop.set()
        archiving.join()
    assert all(hot_versions(client, prefix, o) == [40] for o in originators)
    assert recording.select_notifications(None, 200) == notifications


def test_archiving_twice_or_after_a_crash_stores_each_event_once(
        client: redis.Redis, prefix: str, archive_url: str,  # noqa: F811
        archive: PostgresRecordedArchive) -> None:
    recording = recorder(client, prefix, archive)
    write_history(recording, [uuid.uuid4(), uuid.uuid4()], 20)
    before = recording.select_notifications(None, 100)

    class Killed(BaseException):
        pass

    class KilledAfterCommit:
        """The archive, but the archiver dies once its first batch committed (before it
        marked anything), as a `kill -9` there would leave it."""

        server, table = archive.server, archive.table

        def init(self) -> int:
            return archive.init()

        def insert(self, rows: Sequence[RecordedRow]) -> int:
            archive.insert(rows)
            raise Killed

    with pytest.raises(Killed):
        archiver(client, prefix, KilledAfterCommit(), keep=4).run_once()
    assert len(rows_in(archive_url, prefix)) == 7  # committed, not marked: still in Redis
    client.delete(ApplicationKeys(prefix, APP).archiver("lease"))  # expired since the kill
    assert recording.select_notifications(None, 100) == before

    first = archive_once(client, prefix, archive, keep=4)
    rows = rows_in(archive_url, prefix)
    again = archive_once(client, prefix, archive, keep=4)

    assert (first.events, again) == (len(rows) - 7, Archived())
    assert rows_in(archive_url, prefix) == rows
    assert len({(row[2], row[4]) for row in rows}) == len(rows) >= 36  # the log's, too
    assert {(row[0], row[1], row[3]) for row in rows} == {(APP, "events", True)}
    assert recording.select_notifications(None, 100) == before


def test_without_postgresql_an_archived_read_fails_naming_it_and_hot_reads_and_writes_work(
        client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    proxy = Proxy(server_port(archive_url))
    archive = PostgresRecordedArchive(proxy.url(archive_url), prefix=prefix,
                                      connect_timeout_s=2)
    archive.init()
    recording = recorder(client, prefix, archive)
    originator = uuid.uuid4()
    write_history(recording, [originator], 30)
    archive_once(client, prefix, archive, keep=10)
    assert len(recording.select_events(originator)) == 30

    proxy.close()
    for read in (lambda: recording.select_events(originator),
                 lambda: recording.select_events(originator, lte=25),
                 lambda: recording.select_events(originator, desc=True, limit=11),
                 lambda: recording.select_notifications(None, 10),
                 lambda: recording.select_notifications(15, 10)):
        with pytest.raises(ArchiveUnavailableError) as raised:
            read()
        assert isinstance(raised.value, StorageUnavailableError)
        assert f"archive (PostgreSQL postgres@127.0.0.1:{proxy.port}/" in str(raised.value)
    # What is hot reads without the archive, and writes go on.
    assert [e.originator_version for e in recording.select_events(originator, gt=20)] == list(
        range(21, 31))
    assert len(recording.select_events(originator, desc=True, limit=10)) == 10
    assert [n.id for n in recording.select_notifications(21, 5)] == list(range(21, 26))
    recording.insert_events([StoredEvent(originator, 31, "a", b"31")])
    with pytest.raises(IntegrityError):
        recording.insert_events([StoredEvent(originator, 20, "a", b"20")])
    archive.close()


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner, self.balance = owner, 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Ledger(Application[Any]):
    snapshotting_intervals = {Account: 15}


@pytest.fixture
def environment(prefix: str, archive_url: str,  # noqa: F811
                monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"PERSISTENCE_MODULE": "es_workers.eventsourcing", "ES_REDIS_URL": REDIS_URL,
           "ES_PREFIX": prefix, "ES_ARCHIVE_URL": archive_url, "ES_ARCHIVE_AFTER": "5"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_an_application_gets_an_archived_aggregate_and_keeps_its_snapshots(
        client: redis.Redis, prefix: str, archive_url: str,  # noqa: F811
        environment: dict[str, str]) -> None:
    ledger = Ledger()
    account = Account("ada")
    for amount in range(1, 21):
        account.deposit(amount)
    ledger.save(account)  # 21 events, a snapshot at version 15
    snapshots = ApplicationKeys(prefix, APP).aggregate("snapshots", account.id)
    assert client.xlen(snapshots) == 1

    archive = PostgresRecordedArchive(archive_url, prefix=prefix)
    archive.init()
    assert archiver(client, prefix, archive, keep=5).applications() == ["Ledger"]
    assert archive_once(client, prefix, archive, keep=5).events == 16
    archive.close()

    assert hot_versions(client, prefix, account.id) == list(range(17, 22))
    assert client.xlen(snapshots) == 1  # snapshots stay in Redis
    got: Account = ledger.repository.get(account.id)
    assert (got.version, got.balance, got.owner) == (21, sum(range(1, 21)), "ada")
    old: Account = ledger.repository.get(account.id, version=3)
    assert (old.version, old.balance) == (3, 3)
    assert [n.originator_version for n in ledger.notification_log.select(start=11, limit=10)
            ] == list(range(11, 21))
    ledger.close()


def test_es_workers_archive_archives_the_store_and_the_eventsourcing_applications(
        client: redis.Redis, prefix: str, archive_url: str,  # noqa: F811
        environment: dict[str, str]) -> None:
    ledger = Ledger()
    account = Account("ada")
    for amount in range(1, 10):
        account.deposit(amount)
    ledger.save(account)
    ledger.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    env.update(environment, PYTHONPATH=str(HERE), ES_LOG_LEVEL="WARNING")

    done = subprocess.run([str(Path(sys.executable).parent / "es-workers"), "archive",
                           "process_archive_app:store", "--once"], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"archive table {RECORDED.table(prefix)}: version 0 -> 1" in done.stdout
    assert "archived 5 events" in done.stdout
    assert len(rows_in(archive_url, prefix)) == 5
    assert hot_versions(client, prefix, account.id) == list(range(6, 11))


def test_a_mark_past_an_aggregates_or_the_logs_newest_entry_never_removes_it(
        client: redis.Redis, prefix: str) -> None:
    recording = recorder(client, prefix)
    originator = uuid.uuid4()
    write_history(recording, [originator], 4)
    keys = ApplicationKeys(prefix, APP)

    Script(client, "recorded_archived")(
        keys=RECORDED_ARCHIVED.keys.pack([(keys.aggregate("events", originator),)],
                                         marks=keys.archived("events")),
        args=RECORDED_ARCHIVED.args.pack([(str(originator), 9)]))

    Script(client, "recorded_log_archived")(
        keys=RECORDED_LOG_ARCHIVED.keys.pack(log=keys.notifications(),
                                             mark=keys.archiver("log")),
        args=RECORDED_LOG_ARCHIVED.args.pack(upto=9))

    assert hot_versions(client, prefix, originator) == [4]  # record.lua reads it
    assert client.xlen(keys.notifications()) == 1  # and the log's newest entry
    with pytest.raises(IntegrityError):
        recording.insert_events([StoredEvent(originator, 4, "a", b"again")])
    assert recording.insert_events([StoredEvent(originator, 5, "a", b"five")]) == [5]


# -- what status, the dashboard and the archiver's gauges show of the applications ----------

LABEL = f"eventsourcing:{APP}"


@pytest.fixture
def store(client: redis.Redis, prefix: str, archive_url: str,  # noqa: F811
          archive: PostgresRecordedArchive) -> Iterator[Store]:
    """A Store with no entity types on the applications' prefix, its archive (both tables
    made) on the same PostgreSQL, keeping 10 events hot."""
    native = PostgresArchive(archive_url, prefix=prefix)
    native.init()
    storage = RedisStorage(client, prefix=prefix, archive=native)
    storage.hot_window = HotWindow(events=10)
    yield Store(storage)
    native.close()


def application_row(store: Store) -> ArchiveStatus:
    [row] = [row for row in admin.status(store).archive if row.entity_type == LABEL]
    return row


def sample(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"entity_type": LABEL})


def test_status_shows_an_applications_archive_lag_until_a_pass_archived_it(
        client: redis.Redis, prefix: str, archive_url: str,  # noqa: F811
        archive: PostgresRecordedArchive, store: Store) -> None:
    recording = recorder(client, prefix, archive)
    first, second = uuid.uuid4(), uuid.uuid4()
    write_history(recording, [first, second], 30)
    recording.insert_events([StoredEvent(uuid.uuid4(), 1, "a", b"one")])

    assert application_row(store) == ArchiveStatus(LABEL, 61, 0, 40, 0, 0, None, None)
    archived = store.storage.archive  # type: ignore[attr-defined]
    assert recorded_archive(archived) is recorded_archive(archived)  # not a connection a call

    counted = sample("es_archived_total") or 0
    done = archive_once(client, prefix, archive, keep=10)
    rows = rows_in(archive_url, prefix)
    assert (done.events, len(rows)) == (51, 51)  # 40 past the window, 11 the log's
    assert sample("es_archived_total") == counted + 51
    assert sample("es_archive_lag_events") == 40  # what the pass found past the window
    assert sample("es_archive_lag_seconds") is None  # no time: no series
    assert application_row(store) == ArchiveStatus(
        LABEL, 61, 40, 0, 51, sum(len(row[6]) for row in rows), None, None)

    # Written since the pass, read from the log: the archiver's heads do not know them yet.
    recording.insert_events([StoredEvent(first, version, "a", b"more")
                             for version in range(31, 36)])
    fresh = uuid.uuid4()
    recording.insert_events([StoredEvent(fresh, version, "b", b"new")
                             for version in range(1, 13)])
    row = application_row(store)
    assert (row.events, row.archived_marked, row.lag) == (61 + 5 + 12, 40, 5 + 2)
    archive_once(client, prefix, archive, keep=10)
    assert sample("es_archive_lag_events") == 7
    assert application_row(store).lag == 0
    assert hot_versions(client, prefix, fresh) == list(range(3, 13))
    archive_once(client, prefix, archive, keep=10)
    assert sample("es_archive_lag_events") == 0


def test_status_shows_an_applications_redis_counts_when_its_archive_cannot_be_counted(
        client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    proxy = Proxy(server_port(archive_url))
    native = PostgresArchive(proxy.url(archive_url), prefix=prefix, connect_timeout_s=2)
    native.init()
    storage = RedisStorage(client, prefix=prefix, archive=native)
    storage.hot_window = HotWindow(events=4)
    store = Store(storage)
    recording = recorder(client, prefix)
    write_history(recording, [uuid.uuid4()], 10)

    # No table yet (no `es-workers archive` archived applications): the row says so.
    row = application_row(store)
    assert (row.events, row.archived_marked, row.lag, row.archived_events) == (10, 0, 6, None)
    assert row.error is not None and "es-workers archive APP --init" in row.error

    recorded = PostgresRecordedArchive(archive_url, prefix=prefix)
    recorded.init()
    archive_once(client, prefix, recorded, keep=4)
    recorded.close()
    write_history(recording, [uuid.uuid4()], 7)
    assert application_row(store).archived_events == 6  # the log's 1..6 were among them

    proxy.close()
    row = application_row(store)
    assert (row.events, row.archived_marked, row.lag) == (17, 6, 3)
    assert (row.archived_events, row.archived_bytes, row.lag_age_s) == (None, None, None)
    assert row.error is not None and f"127.0.0.1:{proxy.port}/" in row.error
    native.close()


def test_status_json_and_text_show_the_applications_rows(
        client: redis.Redis, prefix: str, archive_url: str,  # noqa: F811
        environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for kind in (PostgresArchive, PostgresRecordedArchive):
        table = kind(archive_url, prefix=prefix)
        table.init()
        table.close()
    ledger = Ledger()
    account = Account("ada")
    for amount in range(1, 10):
        account.deposit(amount)
    ledger.save(account)  # 10 events: 5 past the window of ES_ARCHIVE_AFTER=5
    ledger.close()
    module = f"status_app_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text((HERE / "process_archive_app.py").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # one line per row, however wide
    try:
        shown = CliRunner().invoke(cli, ["status", f"{module}:store", "--json"])
        text = CliRunner().invoke(cli, ["status", f"{module}:store"])
    finally:
        sys.modules.pop(module, None)

    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)["archive"]
    assert [row["entity_type"] for row in rows] == ["account", LABEL]
    assert rows[1] == {"entity_type": LABEL, "events": 10, "archived_marked": 0, "lag": 5,
                       "archived_events": 0, "archived_bytes": 0, "error": None,
                       "lag_age_s": None}
    assert text.exit_code == 0, text.output
    assert re.search(rf"{LABEL}\W+10\W+0\W+5\W+-\W+0\W+0", text.stdout), text.stdout


def test_the_dashboard_shows_the_applications_archive(
        client: redis.Redis, prefix: str, archive: PostgresRecordedArchive,
        store: Store) -> None:
    from starlette.testclient import TestClient

    from es_workers.dashboard.app import create_app

    recording = recorder(client, prefix, archive)
    write_history(recording, [uuid.uuid4()], 30)
    dashboard = TestClient(create_app(store, sample_every=0.05))

    html = dashboard.get("/").text
    row = re.search(rf'<table id="archive">.*?<tr data-entity-type="{LABEL}">(.*?)</tr>',
                    html, re.DOTALL)
    assert row, html
    assert 'class="n lag warn">20<' in row.group(1)
    assert 'class="n lag-age">-<' in row.group(1) and 'class="n stored">0<' in row.group(1)
    [found] = dashboard.get("/api/status").json()["archive"]
    assert (found["entity_type"], found["events"], found["lag"]) == (LABEL, 30, 20)


# -- eventsourcing's own test kit, every aggregate archived but its newest after each write --


class Archiving:
    """Runs an archiver pass (keep 1) after each write: whatever the kit reads next that is
    not an aggregate's newest event comes from PostgreSQL."""

    archiver: RecorderArchiver

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        ids = super().insert_events(stored_events, **kwargs)  # type: ignore[misc]
        self.archiver.run_once()
        return ids


class ArchivingApplicationRecorder(Archiving, RedisApplicationRecorder):
    pass


class ArchivingProcessRecorder(Archiving, RedisProcessRecorder):
    pass


class OnArchive:
    """A kit case whose recorder reads through an archive that a pass after each write
    fills (real Redis, a prefix and a database of the test's own)."""

    @pytest.fixture(autouse=True)
    def _on_archive(self, request: pytest.FixtureRequest) -> Iterator[None]:
        self.client = real_redis()
        self.prefix = f"t-{uuid.uuid4().hex[:12]}"
        self.archive = PostgresRecordedArchive(request.getfixturevalue("archive_url"),
                                               prefix=self.prefix)
        self.archive.init()
        self.client.sadd(applications_key(self.prefix), APP)
        self.url = request.getfixturevalue("archive_url")
        yield
        self.archive.close()
        delete_prefix(self.client, self.prefix)
        self.client.close()

    def test_insert_select(self) -> None:
        super().test_insert_select()  # type: ignore[misc]
        assert rows_in(self.url, self.prefix), "the kit's reads met no archived event"

    def archiving(self, recorder: Any) -> Any:
        recorder.archiver = RecorderArchiver(self.client, self.prefix, self.archive, keep=1)
        return recorder


class TestApplicationRecorderKitArchived(OnArchive,
                                         kit.ApplicationRecorderTestCase[RedisApplicationRecorder]):
    def create_recorder(self) -> RedisApplicationRecorder:
        recorder: RedisApplicationRecorder = self.archiving(ArchivingApplicationRecorder(
            self.client, ApplicationKeys(self.prefix, APP), archive=self.archive))
        return recorder

    def test_performance(self) -> None:
        pass  # a pass per write measures PostgreSQL, not the recorder

    def test_concurrent_throughput(self) -> None:
        pass  # the same


class TestProcessRecorderKitArchived(OnArchive, kit.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        recorder: ProcessRecorder = self.archiving(ArchivingProcessRecorder(
            self.client, ApplicationKeys(self.prefix, APP), archive=self.archive))
        return recorder

    def test_performance(self) -> None:
        pass  # a pass per write measures PostgreSQL, not the recorder
