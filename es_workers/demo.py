"""`es-workers demo`: the bank example end to end, with real publisher and worker processes.

Without a Redis server it serves an embedded one (fakeredis over TCP) from this process,
so the child processes share it. The app is `es_workers.examples.bank`, the same file as
`examples/bank.py` in a checkout, installed with the package so the demo runs anywhere.
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from . import admin
from .errors import ConfigurationError
from .settings import redact_url
from .workers.dramatiq_internals import redis_broker_scripts

APP_MODULE = "es_workers.examples.bank"
APP = f"{APP_MODULE}:store"
OWNERS = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Leslie", "Margaret"]


def preload_scripts(client: redis.Redis) -> None:
    """Loads every Lua script of es_workers and of Dramatiq's Redis broker.

    The fake TCP server drops a connection after an error reply, and a script's first
    EVALSHA would get NOSCRIPT; loaded beforehand, it never does.
    """
    scripts: list[str | bytes] = [
        entry.read_text()
        for entry in resources.files("es_workers.redis").iterdir()
        if entry.name.endswith(".lua")
    ]
    scripts += redis_broker_scripts()
    for script in scripts:
        client.script_load(script)


class EmbeddedRedis:
    """fakeredis served over TCP on a free local port, from a thread of this process."""

    def __init__(self) -> None:
        try:
            import fakeredis  # the `demo` extra
        except ImportError:
            raise ConfigurationError(
                "ES_REDIS_URL is not set and the demo's embedded Redis needs fakeredis: "
                "pip install 'es_workers[demo]', or set ES_REDIS_URL=redis://HOST:6379/0"
            ) from None

        class Server(fakeredis.TcpFakeServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                connection, address = super().get_request()
                # Without it, Nagle's algorithm and delayed ACKs hold each pipelined
                # reply ~40 ms: the demo ran 6x slower.
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return connection, address

        self.server = Server(("127.0.0.1", 0), server_type="redis", server_version=(7, 0))
        self.server.daemon_threads = True  # connections left open never block the exit
        self.server.block_on_close = False
        preload_scripts(fakeredis.FakeRedis(server=self.server.fake_server))
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="embedded-redis", daemon=True
        )
        self.thread.start()
        self.url = f"redis://127.0.0.1:{self.server.server_address[1]}/0"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def start_child(name: str, args: list[str], env: dict[str, str], logs: Path | None) -> Child:
    log = open(logs / f"{name}.log", "wb") if logs else None  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "es_workers", *args], env=env, stdout=log, stderr=log,
        stdin=subprocess.DEVNULL,
    )
    return Child(name, process, log)


def stop_children(children: list[Child], timeout: float = 30.0) -> dict[str, int | None]:
    """SIGTERM to each child, then waits; kills what has not stopped by `timeout`."""
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes: dict[str, int | None] = {}
    for child in children:
        try:
            codes[child.name] = child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
            codes[child.name] = None
    return codes


def write_history(bank: ModuleType, accounts: int, operations: int, seed: int,
                  tick: Callable[[], None]) -> int:
    """Opens the accounts and runs random deposits, withdrawals and transfers."""
    rng = random.Random(seed)
    ids = [f"acc-{n + 1}" for n in range(accounts)]
    for n, account_id in enumerate(ids):
        bank.open_account(account_id, OWNERS[n % len(OWNERS)])
        bank.deposit(account_id, rng.randint(50, 200))
    refused = 0
    for n in range(operations):
        account_id = rng.choice(ids)
        kind = rng.choice(["deposit", "withdraw", "transfer", "transfer"])
        try:
            if kind == "deposit":
                bank.deposit(account_id, rng.randint(1, 100))
            elif kind == "withdraw":
                bank.withdraw(account_id, rng.randint(1, 80))
            else:
                other = rng.choice([i for i in ids if i != account_id])
                bank.transfer(account_id, other, rng.randint(1, 80))
        except bank.BankError:
            refused += 1  # not enough money: a command refused, nothing written
        if n % 20 == 0:
            tick()
    return refused


@dataclass
class Snapshot:
    expected: dict[str, int]  # balances from the events themselves
    balances: dict[str, int]  # the `balances` read model
    activity: dict[str, int]  # the `activity` read model
    events: int
    status: admin.StoreStatus

    @property
    def done(self) -> bool:
        return (
            self.status.outbox_backlog == 0
            and all(s.caught_up and s.lagging_entities == 0 and not s.parked
                    for s in self.status.subscribers)
            and self.balances == self.expected
            and sum(self.activity.values()) == self.events
        )


def snapshot(bank: ModuleType, ids: list[str]) -> Snapshot:
    expected = {account_id: bank.account(account_id).balance for account_id in ids}
    storage = bank.store.storage
    events = sum(storage.position(bank.ACCOUNT, account_id) for account_id in ids)
    return Snapshot(expected, bank.balances(), bank.activity(), events,
                    admin.status(bank.store))


def render(bank: ModuleType, ids: list[str], shot: Snapshot | None, elapsed: float) -> Group:
    table = Table("account", "owner", "balance (events)", "balance (read model)",
                  title="bank accounts")
    for account_id in ids:
        expected = shot.expected.get(account_id) if shot else None
        seen = shot.balances.get(account_id) if shot else None
        style = "green" if seen is not None and seen == expected else "yellow"
        owner = bank.read_models.hget(f"{bank.KEYS}:balance:{account_id}", "owner")
        table.add_row(account_id, owner.decode() if owner else "",
                      "" if expected is None else str(expected),
                      "" if seen is None else f"[{style}]{seen}[/]")
    lines = Table.grid(padding=(0, 2))
    if shot:
        lines.add_row("events written", str(shot.events))
        lines.add_row("outbox backlog", str(shot.status.outbox_backlog))
        for sub in shot.status.subscribers:
            lines.add_row(f"subscriber {sub.subscriber_id}",
                          f"{sub.events_behind} events behind"
                          + (f", {len(sub.parked)} parked" if sub.parked else ""))
        handled = ", ".join(f"{name} {count}" for name, count in sorted(shot.activity.items()))
        lines.add_row("activity", handled or "-")
    lines.add_row("elapsed", f"{elapsed:.1f} s")
    return Group(table, lines)


def run_demo(*, console: Console, redis_url: str | None, accounts: int, operations: int,
             timeout: float, verbose: bool) -> int:
    """Runs the demo; returns the exit code (0 when every event was handled)."""
    prefix = f"es-demo-{uuid.uuid4().hex[:8]}"
    embedded = EmbeddedRedis() if redis_url is None else None
    url = embedded.url if embedded else str(redis_url)
    where = f"embedded Redis (fakeredis) at {url}" if embedded else f"Redis {redact_url(url)}"
    console.print(f"es-workers demo: {where}, key prefix {prefix!r}")
    os.environ.update(ES_REDIS_URL=url, ES_PREFIX=prefix)  # read by the app when imported
    env = {**os.environ, "ES_LOG_LEVEL": "INFO" if verbose else "WARNING"}
    children: list[Child] = []
    bank: ModuleType | None = None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="es-demo-") as logs:
        try:
            bank = importlib.import_module(APP_MODULE)
            children = [
                start_child("publisher", ["publish", APP], env, None if verbose else Path(logs)),
                start_child("worker", ["worker", APP, "--processes", "1", "--threads", "4"],
                            env, None if verbose else Path(logs)),
            ]
            console.print("started a publisher and a worker process "
                          f"(pids {', '.join(str(c.process.pid) for c in children)})")
            code = _run(console, bank, children, accounts, operations, timeout, started)
            codes = stop_children(children)
            if any(c != 0 for c in codes.values()):
                console.print(f"[red]a process did not stop cleanly: exit codes {codes}[/]")
                _print_logs(console, children)
                return 1
            console.print(f"publisher and worker stopped cleanly (exit codes {codes})")
            return code
        finally:
            stop_children(children, timeout=5)
            for child in children:
                if child.log:
                    child.log.close()
            if bank is not None:
                bank.store.close()
                _delete_prefix(bank.read_models, prefix)
            if embedded:
                embedded.close()


def _run(console: Console, bank: ModuleType, children: list[Child], accounts: int,
         operations: int, timeout: float, started: float) -> int:
    ids = [f"acc-{n + 1}" for n in range(accounts)]
    shot: Snapshot | None = None

    def elapsed() -> float:
        return time.monotonic() - started

    with Live(render(bank, ids, None, 0), console=console, refresh_per_second=8) as live:
        def tick() -> None:
            live.update(render(bank, ids, None, elapsed()))

        refused = write_history(bank, accounts, operations, seed=7, tick=tick)
        written_at = elapsed()
        deadline = time.monotonic() + timeout
        done_twice = 0
        while done_twice < 2:  # twice in a row: nothing was in flight between two looks
            for child in children:
                if child.process.poll() is not None:
                    _stop_live(live, console)
                    console.print(f"[red]the {child.name} exited early "
                                  f"(code {child.process.returncode})[/]")
                    _print_logs(console, children)
                    return 1
            shot = snapshot(bank, ids)
            live.update(render(bank, ids, shot, elapsed()))
            done_twice = done_twice + 1 if shot.done else 0
            if time.monotonic() > deadline:
                _stop_live(live, console)
                console.print(f"[red]timed out after {timeout:.0f} s: events are not all "
                              "handled (see the table above)[/]")
                _print_logs(console, children)
                return 1
            time.sleep(0.2)
    _stop_live(live, console)
    assert shot is not None
    console.print(
        f"wrote {shot.events} events in {written_at:.1f} s ({refused} commands refused for "
        f"lack of funds); every subscriber handled every event by {elapsed():.1f} s; "
        f"read models match the events"
    )
    return 0


def _stop_live(live: Live, console: Console) -> None:
    live.stop()
    if not console.is_terminal:
        console.line()  # Live leaves its last frame without a newline when not on a terminal


def _print_logs(console: Console, children: list[Child]) -> None:
    for child in children:
        tail = child.log_tail()
        if tail:
            console.rule(f"{child.name} log (last lines)")
            console.print(tail, markup=False, highlight=False)


def _delete_prefix(client: Any, prefix: str) -> None:
    try:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        pass  # an embedded server is going away anyway
