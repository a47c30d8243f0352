"""When Redis fails, with real publisher, worker and writer processes (guarantee 9): Redis
killed with kill -9 (AOF always) and down for seconds under load, a Sentinel failover with
ES_WAIT_REPLICAS=1, and the whole app under an ACL user confined to its prefix and over TLS.

The app is tests/failure_app.py (wired from ES_ settings); the writer, tests/failure_writer.py,
writes again what raised StorageUnavailableError or DurabilityError and prints each
acknowledged write; it writes through a Store or an AsyncStore (`half`). Every acknowledged
write must be stored, each entity's stream contiguous, and every subscriber must handle
every event in order, while publisher and worker stay up.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import delete_prefix
from kit import ROOT, Processes, wait_for
from servers import AclUser, RedisSentinelServers, RedisServer
from test_processes import assert_in_order_without_loss, handled, wait_until_handled

from es_workers import Content, RedisStorage, StorageFullError, Store
from es_workers.redis.keys import RedisKeys

ES_WORKERS = str(Path(sys.executable).parent / "es-workers")
APP = "tests.failure_app:store"

pytestmark = [pytest.mark.process, pytest.mark.servers]


def start_app(tmp_path: Path, **settings: str) -> Processes:
    """Publisher and worker processes of the failure app, with `settings` as ES_ variables."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ES_LOG_LEVEL="INFO",
               ES_PUBLISHER_CLAIM_IDLE_MS="1000", ES_PUBLISHER_CLAIM_EVERY_MS="300",
               ES_PUBLISHER_BLOCK_MS="200", ES_REDRIVE_AFTER_MS="1500", ES_LOCK_MS="1500",
               ES_MIN_BACKOFF_MS="20", ES_MAX_BACKOFF_MS="200", ES_MAX_ATTEMPTS="1000")
    env.update({f"ES_{name.upper()}": value for name, value in settings.items()})
    processes = Processes(env, tmp_path)
    processes.start("publisher", ES_WORKERS, "publish", APP)
    processes.start("worker", ES_WORKERS, "worker", APP, "--processes", "1", "--threads", "4")
    processes.wait_ready("publisher", b" started on ", timeout=60)
    processes.wait_ready("worker", b"ready for action", timeout=60)
    return processes


def acknowledged(processes: Processes) -> dict[str, int]:
    """Each entity's last acknowledged event number, from the writer's output."""
    heads: dict[str, int] = {}
    for line in processes.log_of["writer"].read_text().splitlines():
        if line.startswith("ack "):
            _, entity_id, number = line.split()
            assert int(number) == heads.get(entity_id, 0) + 1, f"{entity_id}: acked {number}"
            heads[entity_id] = int(number)
    return heads


def write_through(processes: Processes, disrupt: Callable[[], None], half: str,
                  count: int = 600, entities: int = 12, rate: float = 80) -> list[str]:
    """Runs the writer on the half (Store or AsyncStore), calls `disrupt` once a third of the
    events are acknowledged, and waits for the writer to finish; returns its lines about
    failed attempts."""
    writer = processes.start("writer", sys.executable, "-m", "tests.failure_writer",
                             str(count), str(entities), str(rate), half)
    def writing() -> None:
        assert writer.poll() is None, processes.log_of["writer"].read_text()[-2000:]

    wait_for(lambda: sum(1 for _ in acknowledged(processes).values()) >= entities
             and processes.log_of["writer"].read_text().count("\nack ") >= count // 3,
             "a third of the writes acknowledged", timeout=60, interval=0.05, check=writing)
    disrupt()
    writer.wait(timeout=180)
    output = processes.log_of["writer"].read_text()
    assert writer.returncode == 0, output[-3000:]
    assert output.count("\nack ") + output.startswith("ack ") == count
    return [line for line in output.splitlines() if not line.startswith("ack ")]


def check_everything_stored_and_handled(processes: Processes, client: redis.Redis,
                                        prefix: str, heads: dict[str, int] | None = None
                                        ) -> None:
    """`heads`: each entity's last event number; by default, what the writer acknowledged."""
    heads = acknowledged(processes) if heads is None else heads
    partitions = int(client.hget(f"{prefix}:meta", "partitions") or 0)
    keys = RedisKeys(prefix, partitions)
    for entity_id, head in heads.items():
        # Entry IDs are the event numbers: the stream holds exactly 1..head.
        entries = client.xrange(keys.stream("counter", entity_id))
        ids = [entry_id.decode() for entry_id, _ in entries]
        assert ids == [f"{n}-0" for n in range(1, head + 1)], entity_id
    expected = {(entity_id, n) for entity_id, head in heads.items() for n in range(1, head + 1)}
    def running() -> None:
        for name in ("publisher", "worker"):
            assert processes.running[name].poll() is None, f"the {name} exited"

    wait_until_handled(client, prefix, expected, timeout=120, check=running)
    for subscriber in ("fast", "slow"):
        assert_in_order_without_loss(handled(client, prefix, subscriber), heads)
    for name in ("publisher", "worker"):
        assert processes.running[name].poll() is None, f"the {name} exited"



def log_lines(processes: Processes, name: str, text: str) -> int:
    return processes.log_of[name].read_text(errors="replace").count(text)


# Redis killed: AOF always, back at once or after seconds


@pytest.mark.parametrize("down_s", [0, 4], ids=["kill-9-and-restart", "down-4-s"])
def test_redis_killed_under_load_loses_no_acknowledged_write_and_delivery_completes(
    half: str, redis_aof: Callable[[], RedisServer], tmp_path: Path, down_s: float
) -> None:
    server = redis_aof()
    prefix = f"aof-{uuid.uuid4().hex[:8]}"
    processes = start_app(tmp_path, redis_url=server.url, prefix=prefix,
                          redis_connect_timeout_ms="500", redis_timeout_ms="2000")
    try:
        def outage() -> None:
            server.kill9()
            time.sleep(down_s)
            server.start()

        failed = write_through(processes, outage, half)
        with server.client() as client:
            check_everything_stored_and_handled(processes, client, prefix)
    finally:
        processes.stop_all()
    unavailable = [line.split() for line in failed if line.startswith("unavailable")]
    if down_s:
        assert unavailable, "no write failed while Redis was down"
        # Each failed attempt ended fast: no hang on a dead server.
        assert max(float(took) for _, took, _ in unavailable) < 5, unavailable
        for name in ("publisher", "worker"):
            assert log_lines(processes, name, "recovered after") >= 1, name
        # One warning per backoff step, not one per consumer and retry.
        warnings = log_lines(processes, "worker", "Redis broker unavailable")
        assert 1 <= warnings <= 15, warnings
        assert log_lines(processes, "worker", "Consumer encountered") == 0


# Memory full


class Added(Content):  # the failure app's event, by name
    amount: int


def test_publisher_and_worker_keep_going_once_a_full_memory_is_freed(
    redis_aof: Callable[[], RedisServer], tmp_path: Path
) -> None:
    server = redis_aof()
    prefix = f"oom-{uuid.uuid4().hex[:8]}"
    processes = start_app(tmp_path, redis_url=server.url, prefix=prefix)
    client = server.client()
    store = Store(RedisStorage(client, prefix=prefix), events={"counter": [Added]})
    streams = [store.open("counter", f"c{n}") for n in range(5)]
    heads = {f"c{n}": 4 for n in range(5)}
    try:
        for stream in streams:
            stream.write(*(Added(amount=n) for n in range(2)))
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 256 * 1024)
        filler = 0
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):
            while True:
                client.set(f"{prefix}:filler:{filler}", "x" * 4096)
                filler += 1
        # Well over the limit, so that no buffer freed meanwhile lets a write through.
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 100 * 1024)
        with pytest.raises(StorageFullError):
            streams[0].write(Added(amount=2))
        time.sleep(2)  # publisher and worker run meanwhile, on a full Redis
        client.delete(*(f"{prefix}:filler:{n}" for n in range(filler)))
        # Connections retrying meanwhile grew Redis's buffers too: lift the limit as well.
        client.config_set("maxmemory", 0)
        for stream in streams:
            stream.write(*(Added(amount=n) for n in range(2, 4)))
        check_everything_stored_and_handled(processes, client, prefix, heads)
    finally:
        processes.stop_all()


# Sentinel failover with replica-confirmed writes


def test_a_sentinel_failover_under_writes_confirmed_by_a_replica_loses_nothing(
    half: str, redis_sentinel: RedisSentinelServers, tmp_path: Path
) -> None:
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    sentinels = ",".join(f"{host}:{port}" for host, port in redis_sentinel.sentinel_addresses)
    processes = start_app(tmp_path, redis_sentinels=sentinels, prefix=prefix,
                          redis_sentinel_master=redis_sentinel.master_name,
                          wait_replicas="1", wait_timeout_ms="1000",
                          redis_connect_timeout_ms="500", redis_timeout_ms="2000")
    promoted_after: list[float] = []

    def failover() -> None:
        began = time.monotonic()
        redis_sentinel.kill_primary()
        redis_sentinel.wait_for_new_primary()
        promoted_after.append(time.monotonic() - began)
        redis_sentinel.restore()  # the old primary back as a replica: WAIT 1 can succeed

    try:
        failed = write_through(processes, failover, half, count=500, rate=60)
        with redis_sentinel.primary().client() as client:
            check_everything_stored_and_handled(processes, client, prefix)
            delete_prefix(client, prefix)
    finally:
        processes.stop_all()
    assert promoted_after
    assert any(line.startswith(("unavailable", "unconfirmed")) for line in failed)


# Least privilege and TLS


def test_the_whole_app_runs_as_an_acl_user_confined_to_its_prefix(
    half: str, redis_acl: AclUser, redis_acl_server: RedisServer, tmp_path: Path
) -> None:
    processes = start_app(tmp_path, redis_url=redis_acl.url, prefix=redis_acl.prefix)
    try:
        write_through(processes, lambda: None, half, count=200, rate=200)
        with redis_acl_server.client() as client:
            check_everything_stored_and_handled(processes, client, redis_acl.prefix)
    finally:
        processes.stop_all()
    # The user may touch nothing outside `prefix:` (keys and channels): a key or channel of
    # the store, publisher, worker or broker outside it would have failed with NOPERM.
    for name in ("publisher", "worker"):
        assert log_lines(processes, name, "NOPERM") == 0, name
        assert redis_acl.password not in processes.log_of[name].read_text(errors="replace")


def test_the_whole_app_runs_over_tls(half: str, redis_tls: str, tmp_path: Path) -> None:
    prefix = f"tls-{uuid.uuid4().hex[:8]}"
    processes = start_app(tmp_path, redis_url=redis_tls, prefix=prefix)
    try:
        write_through(processes, lambda: None, half, count=200, rate=200)
        with redis.Redis.from_url(redis_tls) as client:
            check_everything_stored_and_handled(processes, client, prefix)
            delete_prefix(client, prefix)
    finally:
        processes.stop_all()
