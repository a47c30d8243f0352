"""Guarantee 10, one holder, with real `es-workers publish` and two `es-workers worker`
processes on a real Redis, on a lease of 600 ms (tests/process_lease_app.py): a handler
three times the lease runs once at a time; a worker paused (`kill -STOP`) past its lease
and resumed (`kill -CONT`) records nothing after another took over; a worker killed
(`kill -9`) mid-handler leaves the entity to another; SystemExit and KeyboardInterrupt from
handlers park their entities, and SIGTERM and SIGINT still stop a worker cleanly.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import REDIS_URL, delete_prefix, real_redis
from kit import ROOT, Processes, wait_for, write_at_head

from es_workers import Content, DramatiqEventBus, RedisStorage, Store, admin
from es_workers.workers.broker import WakingRedisBroker

APP = "tests.process_lease_app:store"
LEASE_MS = 600  # process_lease_app's

pytestmark = pytest.mark.process


class Added(Content):  # the app's event, declared here without importing (and wiring) it
    amount: int


class Lease:
    """The processes of a test, its Redis, and a Store of its own on the app's prefix and
    broker (to write events, send notices and read the status)."""

    def __init__(self, processes: Processes, client: redis.Redis, prefix: str) -> None:
        self.processes, self.client, self.prefix = processes, client, prefix
        broker = WakingRedisBroker(url=REDIS_URL, namespace=f"{prefix}-dq")
        self.store = Store(RedisStorage(client, prefix=prefix, partitions=4),
                           bus=DramatiqEventBus(broker), events={"counter": [Added]})
        self.store.subscribe("counter", "timed", lambda event: None)  # as the app names it

    def start(self, workers: int = 2) -> None:
        self.processes.publisher(APP)
        for number in range(1, workers + 1):
            self.processes.worker(APP, f"worker-{number}")

    def write(self, entity_id: str, *amounts: int) -> None:
        write_at_head(self.store, "counter", entity_id, *(Added(amount=a) for a in amounts))

    def calls(self, entity_id: str) -> list[tuple[str, int, int]]:
        """The entity's handler calls in the order they happened: (start|end, event number,
        worker pid)."""
        items = (item.decode().split(":") for item in
                 self.client.lrange(f"{self.prefix}:calls", 0, -1))
        return [(what, int(number), int(pid)) for what, entity, number, pid in items
                if entity == entity_id]

    def ends(self, entity_id: str) -> list[tuple[int, int]]:
        return [(number, pid) for what, number, pid in self.calls(entity_id) if what == "end"]

    def started(self, entity_id: str, event_number: int) -> int | None:
        """The pid of the worker process that first started the event's handler."""
        return next((pid for what, number, pid in self.calls(entity_id)
                     if (what, number) == ("start", event_number)), None)

    def caught_up(self) -> bool:
        return all(s.events_behind == 0 for s in admin.status(self.store).subscribers)

    def worker_of(self, pid: int) -> str:
        """The name of the `es-workers worker` whose process group holds `pid`."""
        group = os.getpgid(pid)
        return next(name for name, process in self.processes.running.items()
                    if process.pid == group)

    def logs(self) -> bytes:
        return b"".join(path.read_bytes() for path in self.processes.log_of.values())


@pytest.fixture
def lease(tmp_path: Path) -> Iterator[Lease]:
    client = real_redis()
    prefix = f"proc-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ, ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, PYTHONPATH=str(ROOT),
               ES_LOG_LEVEL="INFO")
    made = Lease(Processes(env, tmp_path), client, prefix)
    yield made
    made.processes.stop_all()
    made.store.close()
    delete_prefix(client, prefix)
    delete_prefix(client, f"{prefix}-dq")


def most_at_once(calls: list[tuple[str, int, int]]) -> int:
    running = most = 0
    for what, _, _ in calls:
        running += 1 if what == "start" else -1
        most = max(most, running)
    return most


def test_a_handler_three_times_the_lease_runs_once_at_a_time_and_is_checkpointed_once(
    lease: Lease,
) -> None:
    lease.start()
    lease.write("e1", 3 * LEASE_MS, 10, 10)
    wait_for(lambda: lease.started("e1", 1), "the slow handler to start", timeout=30)

    def send_a_notice() -> None:  # as new events and the publisher's sweep would
        lease.store.bus.notify("counter", "e1", 3)

    wait_for(lambda: len(lease.ends("e1")) >= 3 and lease.caught_up(),
             "e1 handled to its head", timeout=30, interval=0.05, check=send_a_notice)

    calls = lease.calls("e1")
    assert most_at_once(calls) == 1, calls
    assert [(what, number) for what, number, _ in calls] == [
        ("start", 1), ("end", 1), ("start", 2), ("end", 2), ("start", 3), ("end", 3)]


def test_a_paused_holder_past_its_lease_records_nothing_after_another_took_over(
    lease: Lease,
) -> None:
    """`kill -STOP` of the worker process running a handler, past its lease: another worker
    takes the entity over and handles it to its head; `kill -CONT`: the resumed holder
    finds its lease lost, its handler is stopped, and it records nothing."""
    lease.start()
    lease.write("e1", 1500, 10, 10)
    wait_for(lambda: lease.started("e1", 1), "the first handler to start", timeout=30)
    paused = lease.started("e1", 1)
    assert paused is not None
    os.kill(paused, signal.SIGSTOP)
    try:
        wait_for(lambda: len(lease.ends("e1")) >= 3 and lease.caught_up(),
                 "another worker to handle e1 to its head", timeout=30)
    finally:
        os.kill(paused, signal.SIGCONT)
    wait_for(lambda: b"lost the lock on counter 'e1' during event 1" in lease.logs(),
             "the resumed holder to stop", timeout=30)

    other = lease.ends("e1")[0][1]
    assert other != paused
    assert lease.ends("e1") == [(1, other), (2, other), (3, other)]
    assert [(what, number) for what, number, pid in lease.calls("e1") if pid == paused] == [
        ("start", 1)]
    assert admin.parked(lease.store, "timed", "counter") == []


def test_a_worker_killed_mid_handler_leaves_the_entity_to_another(lease: Lease) -> None:
    lease.start()
    lease.write("e1", 1500, 10, 10)
    wait_for(lambda: lease.started("e1", 1), "the first handler to start", timeout=30)
    killed = lease.started("e1", 1)
    assert killed is not None
    lease.processes.kill(lease.worker_of(killed))  # SIGKILL, whole process group

    wait_for(lambda: len(lease.ends("e1")) >= 3 and lease.caught_up(),
             "the other worker to handle e1 to its head", timeout=30)
    other = lease.ends("e1")[0][1]
    assert other != killed
    assert lease.ends("e1") == [(1, other), (2, other), (3, other)]


def test_system_exit_and_keyboard_interrupt_from_handlers_park_their_entities_and_a_worker_still_stops_on_sigterm_and_sigint(  # noqa: E501
    lease: Lease,
) -> None:
    lease.start()
    lease.write("exits", -1)
    lease.write("interrupts", -2)
    lease.write("fine", 10, 10)

    wait_for(lambda: len(admin.parked(lease.store, "timed", "counter")) == 2,
             "exits and interrupts parked", timeout=30)
    parked = {p.entity_id: (p.error, p.attempts)
              for p in admin.parked(lease.store, "timed", "counter")}
    assert parked == {"exits": ("SystemExit: amount -1", 2),
                      "interrupts": ("KeyboardInterrupt: amount -2", 2)}
    wait_for(lambda: [n for n, _ in lease.ends("fine")] == [1, 2], "fine handled", timeout=30)

    for name, sig in (("worker-1", signal.SIGTERM), ("worker-2", signal.SIGINT)):
        lease.processes.wait_ready(name, b"ready for action")
        lease.processes.kill(name, sig)
        assert lease.processes.running[name].returncode == 0, f"{name} did not stop cleanly"
