"""Helpers every test file shares (one copy each): waiting on a condition with a deadline,
and writing to an entity at its head."""

from __future__ import annotations

import time
from collections.abc import Callable

from conftest import Deposited, Opened

from es_workers import Content, Store


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
