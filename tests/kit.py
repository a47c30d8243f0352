"""Helpers every test file shares (one copy each): waiting on a condition with a deadline,
writing to an entity at its head, and running real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Deposited, Opened

from es_workers import Content, Store

ROOT = Path(__file__).resolve().parent.parent
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")


def wait_for(
    condition: Callable[[], object],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.01,
    check: Callable[[], None] | None = None,
) -> None:
    """Polls `condition` until it is true; fails naming `what` after `timeout` seconds.
    `check` runs at each poll and may raise to fail early (e.g. a process that died)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def write_at_head(store: Store, entity_type: str, entity_id: str, *contents: Content) -> int:
    """Appends to the entity at its current head; returns the new head."""
    with store.open(entity_type, entity_id) as stream:
        for _ in stream.all():
            pass
        stream.write(*contents)
        return stream.position


def write_count(store: Store, entity_id: str, count: int) -> int:
    """Appends `count` account events (an Opened first if the account is new); returns the
    head."""
    head = 0
    for event in store.read("account", entity_id):
        head = event.event_number
    contents = [
        Opened(owner=entity_id) if head + i == 0 else Deposited(amount=head + i)
        for i in range(count)
    ]
    return write_at_head(store, "account", entity_id, *contents)


class Processes:
    """Real `es-workers` processes (and others) of a test, each in its own process group,
    logging to files; `stop_all` kills what is left."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.log_of: dict[str, Path] = {}
        self.starts = 0

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.log_of[name] = self.logs / f"{name}-{self.starts}.log"
        out = open(self.log_of[name], "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [*args], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill reaches Dramatiq's children
        )
        self.running[name] = process
        return process

    def publisher(self, app: str) -> subprocess.Popen[bytes]:
        return self.start("publisher", ES_WORKERS, "publish", app)

    def worker(self, app: str, name: str = "worker") -> subprocess.Popen[bytes]:
        return self.start(name, ES_WORKERS, "worker", app, "--processes", "1",
                          "--threads", "4")

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        process = self.running[name]
        os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def wait_ready(self, name: str, marker: bytes, timeout: float = 30) -> None:
        """Waits until the process logged `marker` (its signal handlers are in place)."""
        deadline = time.monotonic() + timeout
        while marker not in self.log_of[name].read_bytes():
            assert self.running[name].poll() is None, f"{name} exited"
            assert time.monotonic() < deadline, f"{name} never logged {marker!r}"
            time.sleep(0.1)

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
