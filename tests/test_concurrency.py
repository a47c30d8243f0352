"""Optimistic concurrency under real contention: threads and processes racing on one
entity, each re-reading and retrying on ConcurrencyError, end with a gap-free stream
1..N holding every write exactly once (and, on Redis, an outbox that covers 1..N once)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from conftest import REDIS_URL, Deposited, delete_prefix, real_redis
from kit import wait_for

from es_workers import ConcurrencyError, InMemoryStorage, RedisStorage, Store
from es_workers.redis.scripts import source

MakeStore = Callable[..., Store]
AnyStorage = RedisStorage | InMemoryStorage
WRITER = Path(__file__).with_name("race_writer.py")


def write_with_retry(
    store: Store, entity_id: str, writer: int, count: int, ready: threading.Barrier | None = None
) -> int:
    """Appends `count` events, re-reading after each conflict; returns the conflicts met.

    With `ready`, waits there after the first read, so that all writers first write at the
    same position (and all but one conflict, however fast the storage)."""
    stream = store.open("account", entity_id)
    list(stream.all())
    if ready is not None:
        ready.wait()
    conflicts = 0
    written = 0
    while written < count:
        try:
            stream.write(Deposited(amount=writer))
            written += 1
        except ConcurrencyError as error:
            assert error.actual > error.expected == stream.position
            conflicts += 1
            stream = store.open_from("account", entity_id, stream.position)
            list(stream.all())
    return conflicts


def assert_every_write_stored_once(store: Store, entity_id: str, writers: int, each: int) -> None:
    events = list(store.open("account", entity_id).all())
    total = writers * each
    assert [e.event_number for e in events] == list(range(1, total + 1))
    assert len({e.store_event_id for e in events}) == total
    by_writer = Counter(e.content.amount for e in events if isinstance(e.content, Deposited))
    assert by_writer == dict.fromkeys(range(writers), each)
    if isinstance(store.storage, RedisStorage):
        assert_outbox_covers_once(store.storage, entity_id, total)


def assert_outbox_covers_once(storage: RedisStorage, entity_id: str, total: int) -> None:
    outbox = storage.keys.outbox(storage.keys.partition("account", entity_id))
    covered: list[int] = []
    entries: Any = storage.client.xrange(outbox)
    for _, fields in entries:
        first, last = int(fields[b"first"]), int(fields[b"last"])
        covered.extend(range(first, last + 1))
    assert covered == list(range(1, total + 1))  # once each, in commit order


def test_threads_racing_on_one_entity_store_every_write_once_with_contiguous_numbers(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store()
    writers, each = 8, 50
    ready = threading.Barrier(writers)
    conflicts: list[int] = []
    errors: list[BaseException] = []

    def run(writer: int) -> None:
        try:
            conflicts.append(write_with_retry(store, "race", writer, each, ready))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(conflicts) == writers
    assert sum(conflicts) >= writers - 1  # they did race
    assert_every_write_stored_once(store, "race", writers, each)


def test_threads_on_different_entities_do_not_conflict(make_any_store: MakeStore) -> None:
    store = make_any_store()
    conflicts: list[int] = []
    threads = [
        threading.Thread(
            target=lambda n=n: conflicts.append(write_with_retry(store, f"own-{n}", 0, 30))
        )
        for n in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert conflicts == [0] * 6
    for n in range(6):
        assert_every_write_stored_once(store, f"own-{n}", 1, 30)


@pytest.fixture
def server_url(backend: str) -> Iterator[str]:
    """A Redis URL other processes can reach: the real server, or fakeredis over TCP."""
    if backend == "redis":
        real_redis().close()  # skips (or fails under ES_REQUIRE_REDIS) if it is down
        yield REDIS_URL
        return
    server = fakeredis.TcpFakeServer(("127.0.0.1", 0), server_version=(7, 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.single_redis  # the writer processes take a plain redis:// URL
def test_processes_racing_on_one_entity_store_every_write_once_with_contiguous_numbers(
    server_url: str,
) -> None:
    writers, each = 4, 50
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(server_url)
    store = Store(RedisStorage(client, prefix=prefix), events={"account": [Deposited]})
    # fakeredis' TCP server closes the connection after any error reply, NOSCRIPT included
    # (redis-py's EVALSHA, then SCRIPT LOAD on the closed connection): load it beforehand.
    client.script_load(source("append"))
    processes = [
        subprocess.Popen(
            [sys.executable, str(WRITER), server_url, prefix, "race", str(n), str(each)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    try:
        wait_until(lambda: int(client.get(f"{prefix}:ready") or 0) == writers, processes)
        client.set(f"{prefix}:go", 1)
        outputs = [process.communicate(timeout=60) for process in processes]

        assert [p.returncode for p in processes] == [0] * writers, outputs
        conflicts = [int(out) for out, _ in outputs]
        assert sum(conflicts) > 0  # they did race
        assert_every_write_stored_once(store, "race", writers, each)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        delete_prefix(client, prefix)
        client.close()


def wait_until(condition: Callable[[], bool], processes: list[subprocess.Popen[str]]) -> None:
    def none_failed() -> None:
        failed = [p for p in processes if p.poll() not in (None, 0)]
        if failed:
            raise AssertionError(f"a writer process failed: {failed[0].communicate()}")

    wait_for(condition, "the writer processes to start", check=none_failed)
