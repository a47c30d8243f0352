"""Real `es-workers archive` processes on real Redis and PostgreSQL: `kill -9` in the middle of
archiving loses and duplicates nothing, the CLI creates the table, verifies and reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from archive_kit import archive_url  # noqa: F401  (a fixture)
from conftest import REDIS_URL, delete_prefix, real_redis
from kit import wait_for

from es_workers import Content, RedisStorage, Store
from es_workers.postgres import PostgresArchive
from es_workers.postgres.schema import table_name

HERE = Path(__file__).parent
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")
APP = "process_archive_app:store"
ENTITIES, EVENTS, HOT = 200, 50, 10


class Opened(Content):  # as process_archive_app's (importing it would build its store here)
    owner: str


class Deposited(Content):
    amount: int


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


def environment(prefix: str, url: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    env.update(ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, ES_PARTITIONS="4",
               ES_ARCHIVE_URL=url, ES_ARCHIVE_AFTER=str(HOT), ES_LOG_LEVEL="WARNING",
               PYTHONPATH=str(HERE), **more)
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ES_WORKERS, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=HERE)


def write_history(client: redis.Redis, prefix: str, archive: PostgresArchive) -> Store:
    store = Store(RedisStorage(client, prefix=prefix, partitions=4, archive=archive),
                  events={"account": [Opened, Deposited]})
    for n in range(ENTITIES):
        with store.open("account", f"a{n}") as stream:
            stream.write(Opened(owner=f"o{n}"))
            for first in range(2, EVENTS + 1, 7):
                stream.write(*(Deposited(amount=i) for i in range(first, min(first + 7,
                                                                              EVENTS + 1))))
    return store


def archived_rows(url: str, prefix: str) -> tuple[int, int]:
    with psycopg.connect(url) as connection:
        row = connection.execute(
            f'SELECT count(*), count(DISTINCT (entity_id, event_number)) FROM '
            f'"{table_name(prefix)}"').fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_kill_9_of_an_archiver_mid_batch_loses_and_duplicates_nothing(
        client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    archive = PostgresArchive(archive_url, prefix=prefix)
    archive.init()
    store = write_history(client, prefix, archive)
    before = {f"a{n}": list(store.read("account", f"a{n}")) for n in range(ENTITIES)}
    env = environment(prefix, archive_url, ES_ARCHIVE_BATCH="300")

    archiver = subprocess.Popen([ES_WORKERS, "archive", APP, "--lease-ms", "1000"], env=env,
                                cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: archived_rows(archive_url, prefix)[0] > 0, "the first batch",
                 timeout=60, interval=0.005)
    finally:
        archiver.send_signal(signal.SIGKILL)
        archiver.wait(timeout=30)
    killed_at = archived_rows(archive_url, prefix)[0]
    assert 0 < killed_at < ENTITIES * (EVENTS - HOT), "killed after it finished: no test"

    # Once its leases expire, another archiver finishes the job.
    wait_for(lambda: not any(client.exists(RedisStorage(client, prefix=prefix).keys.archiver(p))
                             for p in range(4)), "the leases to expire", timeout=10)
    result = cli(env, "archive", APP, "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert archived_rows(archive_url, prefix) == (ENTITIES * (EVENTS - HOT),) * 2
    marks = store.storage.archived_marks("account")  # type: ignore[attr-defined]
    assert marks == {f"a{n}": EVENTS - HOT for n in range(ENTITIES)}

    verified = cli(env, "archive", APP, "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    store.scavenge()
    assert client.xlen(RedisStorage(client, prefix=prefix).keys.stream("account", "a0")) == HOT
    for entity_id, events in before.items():
        assert [(e.event_number, e.store_event_id, e.content, e.position)
                for e in store.read("account", entity_id)] == [
            (e.event_number, e.store_event_id, e.content, e.position) for e in events]
    archive.close()


def test_the_cli_creates_the_table_verifies_and_status_shows_the_archive(
        client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    env = environment(prefix, archive_url)
    created = cli(env, "archive", APP, "--init")
    assert created.returncode == 0 and "version 0 -> 1" in created.stdout, created.stderr
    archive = PostgresArchive(archive_url, prefix=prefix)
    started = time.time()
    store = write_history(client, prefix, archive)
    status = cli(env, "status", APP, "--json")
    assert status.returncode == 0, status.stderr
    [lagging] = json.loads(status.stdout)["archive"]
    assert (lagging["lag"], lagging["archived_marked"]) == (ENTITIES * (EVENTS - HOT), 0)
    assert 0 < lagging["lag_age_s"] <= time.time() - started  # a0's event 1, written first
    assert cli(env, "archive", APP, "--once").returncode == 0

    status = cli(env, "status", APP, "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["archive"]
    assert rows == [{"entity_type": "account", "events": ENTITIES * EVENTS,
                     "archived_marked": ENTITIES * (EVENTS - HOT), "lag": 0,
                     "archived_events": ENTITIES * (EVENTS - HOT),
                     "archived_bytes": rows[0]["archived_bytes"], "error": None,
                     "lag_age_s": None}]

    # An archived event altered in PostgreSQL while still in Redis: --verify says so.
    with psycopg.connect(archive_url) as connection:
        connection.execute(f'UPDATE "{table_name(prefix)}" SET data = %s WHERE entity_id = '
                           "'a3' AND event_number = 2", [b'{"amount": 999}'])
    verified = cli(env, "archive", APP, "--verify")
    assert verified.returncode == 1
    assert "'a3': events 1..40 differ" in verified.stdout
    store.storage.close()
    archive.close()


def test_an_archive_built_in_code_is_run_by_the_cli_without_es_archive_url(
        client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    """The app gives its storage a PostgresArchive itself: `es-workers archive` archives its
    entities and (the same PostgreSQL and prefix) its eventsourcing applications."""
    env = environment(prefix, archive_url, APP_ARCHIVE_URL=archive_url, APP_HOT=str(HOT))
    del env["ES_ARCHIVE_URL"]
    archive = PostgresArchive(archive_url, prefix=prefix)
    store = write_history(client, prefix, archive)
    done = cli(env, "archive", "process_archive_code_app:store", "--once")
    assert done.returncode == 0, done.stderr
    assert f"archived {ENTITIES * (EVENTS - HOT)} events" in done.stdout
    assert archived_rows(archive_url, prefix) == (ENTITIES * (EVENTS - HOT),) * 2
    store.storage.close()
    archive.close()


def test_a_running_archiver_scavenges_what_it_archived_unless_told_not_to(
        client: redis.Redis, prefix: str, archive_url: str) -> None:  # noqa: F811
    archive = PostgresArchive(archive_url, prefix=prefix)
    archive.init()
    store = write_history(client, prefix, archive)
    keys = RedisStorage(client, prefix=prefix).keys
    total = ENTITIES * (EVENTS - HOT)

    def held_in_redis() -> list[int]:
        return [client.xlen(keys.stream("account", f"a{n}")) for n in range(ENTITIES)]

    env = environment(prefix, archive_url)
    for flag, held in (("--no-scavenge", EVENTS), ("--scavenge", HOT)):
        archiver = subprocess.Popen([ES_WORKERS, "archive", APP, flag], env=env, cwd=HERE,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: archived_rows(archive_url, prefix)[0] == total, "every batch",
                     timeout=60)
            if held == HOT:  # the events archived leave Redis without a publisher
                wait_for(lambda: held_in_redis() == [HOT] * ENTITIES, "the scavenge",
                         timeout=60)
        finally:
            archiver.send_signal(signal.SIGTERM)
            output = archiver.communicate(timeout=30)[0].decode()
        assert archiver.returncode == 0, output
        assert held_in_redis() == [held] * ENTITIES
    assert [e.event_number for e in store.read("account", "a0")] == list(range(1, EVENTS + 1))
    archive.close()


def autogroup(pid: int) -> str | None:
    """The process' autogroup and its niceness (`/autogroup-12 nice 7`); None: the kernel has
    no autogroups."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().strip()
    except FileNotFoundError:
        return None


@pytest.mark.parametrize(("setting", "started_at", "own_session", "expected"), [
    ("7", 0, True, 7),  # as honcho starts it: its niceness, and its session's autogroup's
    ("0", 0, True, 0),  # 0: as the others
    ("7", 15, False, 15),  # started nicer, in the session of another (this test's)
])
def test_a_running_archiver_takes_its_niceness_and_gives_it_to_its_own_session_only(
        client: redis.Redis, prefix: str, archive_url: str,  # noqa: F811
        setting: str, started_at: int, own_session: bool, expected: int) -> None:
    keys = RedisStorage(client, prefix=prefix, partitions=4).keys
    env = environment(prefix, archive_url, ES_ARCHIVE_NICE=setting)
    ours = autogroup(os.getpid())
    archiver = subprocess.Popen(["nice", "-n", str(started_at), ES_WORKERS, "archive", APP],
                                env=env, cwd=HERE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=own_session)
    try:
        wait_for(lambda: any(client.exists(keys.archiver(p)) for p in range(4)),
                 "its first pass (its leases)", timeout=60)
        assert os.getpriority(os.PRIO_PROCESS, archiver.pid) == expected
        found = autogroup(archiver.pid)
        if not own_session:
            assert found == ours  # the session of another is left as it was
        elif ours is not None:  # a kernel with autogroups: its own session's has its niceness
            assert found is not None and found.endswith(f" nice {expected}"), found
        assert autogroup(os.getpid()) == ours
    finally:
        archiver.send_signal(signal.SIGTERM)
        output = archiver.communicate(timeout=30)[0].decode()
    assert archiver.returncode == 0, output
