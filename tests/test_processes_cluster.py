"""Guarantee 5 beyond one Redis: real writer, `es-workers publish` and `es-workers worker`
processes on a Redis Cluster with RabbitMQ, each killed with SIGKILL while 40 entities x 15
events are written: nothing lost, order per entity kept, `es-workers status --json` answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import delete_prefix
from kit import ES_WORKERS, ROOT, Processes, wait_for
from redis.cluster import RedisCluster
from servers import RedisClusterServers
from test_processes import assert_in_order_without_loss

APP = "tests.cluster_app:store"
ENTITIES, EVENTS = 40, 15

pytestmark = [pytest.mark.process, pytest.mark.servers]


@pytest.fixture
def cluster_processes(
    redis_cluster: RedisClusterServers, rabbitmq_vhost: str, tmp_path: Path
) -> Iterator[tuple[Processes, RedisCluster, str]]:
    client = redis_cluster.client()
    prefix = f"proc-{uuid.uuid4().hex[:10]}"
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), ES_LOG_LEVEL="INFO", ES_PREFIX=prefix,
        ES_REDIS_URL=redis_cluster.urls[1], ES_BROKER_URL=rabbitmq_vhost,
        ES_PUBLISHER_CLAIM_IDLE_MS="1000", ES_PUBLISHER_CLAIM_EVERY_MS="300",
        ES_PUBLISHER_BLOCK_MS="200", ES_REDRIVE_AFTER_MS="1500", ES_LOCK_MS="1500",
        ES_MIN_BACKOFF_MS="20", ES_MAX_BACKOFF_MS="200",
    )
    processes = Processes(env, tmp_path)
    try:
        yield processes, client, prefix
    finally:
        processes.stop_all()
        delete_prefix(client, prefix)  # type: ignore[arg-type]
        client.close()


def handled(client: RedisCluster, prefix: str, subscriber: str) -> list[tuple[str, int]]:
    items = client.lrange(f"{prefix}:log:{subscriber}", 0, -1)
    pairs = [item.decode().split(":") for item in items]
    return [(entity_id, int(number)) for entity_id, number in pairs]


def test_kill_9_of_writer_publisher_and_worker_on_a_cluster_with_rabbitmq_loses_nothing(
    cluster_processes: tuple[Processes, RedisCluster, str],
) -> None:
    processes, client, prefix = cluster_processes
    start = {
        "publisher": lambda: processes.start("publisher", ES_WORKERS, "publish", APP),
        "worker": lambda: processes.start("worker", ES_WORKERS, "worker", APP,
                                          "--processes", "1", "--threads", "4"),
        "writer": lambda: processes.start("writer", sys.executable, "-m", "tests.cluster_app",
                                          str(ENTITIES), str(EVENTS), "100"),
    }
    for name in ("publisher", "worker", "writer"):
        start[name]()
    killed: list[str] = []
    # Each once, while the writer writes (~6 s at 100 writes/s): killing on until the
    # writer is done could go on for ever on a slow machine, each restart cut short again.
    for victim in ("writer", "publisher", "worker"):
        time.sleep(1.5)
        if processes.running[victim].poll() is None:
            processes.kill(victim)
            killed.append(victim)
        start[victim]()
        time.sleep(0.3)
    try:
        assert processes.running["writer"].wait(timeout=90) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("the writer did not finish in 90 s; its log ends:\n"
                    + processes.log_of["writer"].read_text(errors="replace")[-3000:])
    assert {"writer", "publisher", "worker"} <= set(killed)

    heads = {f"c{e}": EVENTS for e in range(ENTITIES)}
    expected = {(entity_id, n) for entity_id in heads for n in range(1, EVENTS + 1)}
    wait_for(
        lambda: all(expected <= set(handled(client, prefix, s)) for s in ("fast", "slow")),
        "every event handled by both subscribers", timeout=120, interval=0.25,
    )
    for subscriber in ("fast", "slow"):
        repeats = assert_in_order_without_loss(handled(client, prefix, subscriber), heads)
        assert repeats <= 4 * len(killed), f"{subscriber}: {repeats} repeats"

    status = subprocess.run(
        [ES_WORKERS, "status", APP, "--json"], cwd=ROOT, env=processes.env,
        capture_output=True, text=True, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["outbox_backlog"] == 0 and report["warnings"] == []
    assert {(s["subscriber_id"], s["events_behind"]) for s in report["subscribers"]} == {
        ("fast", 0), ("slow", 0)
    }
