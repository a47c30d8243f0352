"""Helpers for the rebuild tests: a writer of deposits and withdrawals to a handful of
accounts, running in a thread, and what the events say of each account."""

from __future__ import annotations

import random
import threading

from conftest import Deposited, Opened, Withdrawn
from kit import write_at_head

from es_workers import Event, Store

ACCOUNTS = [f"acc-{i}" for i in range(5)]


def amount(event: Event) -> int:
    """What the event does to the account's balance."""
    match event.content:
        case Deposited(amount=value):
            return value
        case Withdrawn(amount=value):
            return -value
    return 0


def write(store: Store, account: str, *contents: Deposited | Withdrawn) -> int:
    """Appends to the account (opening it first if it is new); returns its head."""
    if not any(True for _ in store.read("account", account)):
        return write_at_head(store, "account", account, Opened(owner=account), *contents)
    return write_at_head(store, "account", account, *contents)


def balances_of(store: Store) -> dict[str, int]:
    """The balance of each account, as its events say."""
    return {a: sum(amount(e) for e in store.read("account", a)) for a in ACCOUNTS}


def heads_of(store: Store) -> dict[str, int]:
    """The last event number of each account."""
    return {a: max((e.event_number for e in store.read("account", a)), default=0)
            for a in ACCOUNTS}


class Writer:
    """Deposits and withdrawals to ACCOUNTS from a thread, until the `with` block ends."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        rng = random.Random(18)
        try:
            while not self._stop.wait(0.002):  # paced: the machine's cores are shared
                account = rng.choice(ACCOUNTS)
                kind = Deposited if rng.random() < 0.6 else Withdrawn
                write(self.store, account, kind(amount=rng.randint(1, 50)))
                self.written += 1
        except BaseException as error:
            self.error = error
