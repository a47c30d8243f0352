"""`es-workers rebuild` across real processes on real Redis: a publisher and a worker
process run the bank of tests/apps/bank_app.py while this process writes deposits and
withdrawals the whole time. Afterwards the `balances` read model must say what the events
say, every account handed over from event 1, and `audit` must have handled each event once.
A rebuild killed halfway must not hold the subscriber, must show in status, and must run
again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from apps.bank_kit import ACCOUNTS, Writer, balances_of, heads_of, write
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, delete_prefix, real_redis
from dramatiq.brokers.stub import StubBroker
from kit import ES_WORKERS, ROOT, Processes, wait_for

from es_workers import DramatiqEventBus, RedisStorage, Store, admin

APP = "tests.apps.bank_app:store"

pytestmark = pytest.mark.process


class Bank:
    """The app's Redis as this process sees it: a Store to write with and to ask status
    (its bus knows the app's subscribers by name), and the read model and audit log."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.store = Store(RedisStorage(client, prefix=prefix, partitions=4),
                           bus=DramatiqEventBus(StubBroker()), events=ACCOUNT_EVENTS)
        for subscriber_id in ("balances", "audit"):
            self.store.subscribe("account", subscriber_id, lambda event: None)

    def read_model(self) -> dict[str, tuple[int, int]]:
        """Account -> (balance, last event applied)."""
        found = {}
        for account in ACCOUNTS:
            row = self.client.hgetall(f"{self.prefix}:balances:{account}")
            found[account] = (int(row.get(b"balance", 0)), int(row.get(b"event_number", 0)))
        return found

    def audited(self) -> list[tuple[str, int]]:
        items = self.client.lrange(f"{self.prefix}:log:audit", 0, -1)
        return [(entity_id, int(n)) for entity_id, n in (i.decode().split(":") for i in items)]

    def gaps(self) -> list[bytes]:
        return list(self.client.lrange(f"{self.prefix}:gaps", 0, -1))

    def balances(self) -> admin.SubscriberStatus:
        return next(s for s in admin.status(self.store).subscribers
                    if s.subscriber_id == "balances")

    def assert_rebuilt(self) -> None:
        heads = heads_of(self.store)
        wait_for(lambda: {a: n for a, (_, n) in self.read_model().items()} == heads,
                 "the read model to catch up", timeout=60, interval=0.1)
        assert {a: b for a, (b, _) in self.read_model().items()} == balances_of(self.store)
        assert self.gaps() == []
        expected = [(a, n) for a, head in heads.items() for n in range(1, head + 1)]
        wait_for(lambda: len(self.audited()) >= len(expected), "audit to catch up",
                 timeout=60, interval=0.1)
        assert sorted(self.audited()) == sorted(expected), "audit handled an event twice"


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[tuple[Processes, Bank]]:
    client = real_redis()
    prefix = f"proc-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ, ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, PYTHONPATH=str(ROOT),
               ES_LOG_LEVEL="INFO")
    processes = Processes(env, tmp_path)
    processes.publisher(APP)
    processes.worker(APP)
    yield processes, Bank(client, prefix)
    processes.stop_all()
    delete_prefix(client, prefix)
    delete_prefix(client, f"{prefix}-dq")


def rebuild(processes: Processes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ES_WORKERS, "rebuild", APP, "balances", "--yes"], cwd=ROOT,
                          env=processes.env, capture_output=True, text=True, timeout=120)


def test_rebuild_with_a_writer_running_across_processes(bank) -> None:
    processes, app = bank
    with Writer(app.store) as writer:
        wait_for(lambda: len(app.audited()) >= 60, "some history handled", timeout=60)
        done = rebuild(processes)
        assert done.returncode == 0, done.stderr
        assert "balances: rebuilt from 5 entities" in done.stdout
        written = writer.written
        wait_for(lambda: writer.written >= written + 30, "events written after the rebuild")
    app.assert_rebuilt()
    assert not app.balances().paused and app.balances().rebuild is None


def test_a_rebuild_killed_halfway_lets_go_shows_in_status_and_runs_again(bank) -> None:
    processes, app = bank
    for account in ACCOUNTS:
        write(app.store, account, Deposited(amount=10))
    wait_for(lambda: len(app.audited()) == 10, "the history handled", timeout=60)
    env = processes.env
    processes.env = dict(env, BANK_APP_HANG_IN_RESET="1")  # for this process only
    killed = processes.start(
        "rebuild", sys.executable, "-c",
        "from tests.apps.bank_app import store; store.rebuild('balances', pause_ms=1000)",
    )
    processes.env = env

    def alive() -> None:
        assert killed.poll() is None, "the rebuild exited"

    wait_for(lambda: app.client.exists(f"{app.prefix}:hanging"), "the reset hook to run",
             timeout=60, check=alive)
    assert app.balances().paused
    processes.kill("rebuild")
    for account in ACCOUNTS:
        write(app.store, account, Deposited(amount=1))

    wait_for(lambda: not app.balances().paused, "the pause to expire", timeout=10)
    left = app.balances().rebuild
    assert left is not None and left.stage == "reset hook"  # status says it died halfway
    app.assert_rebuilt()  # meanwhile the sweep handed the history over (every entity due)

    done = rebuild(processes)
    assert done.returncode == 0, done.stderr
    assert app.balances().rebuild is None
    app.assert_rebuilt()
