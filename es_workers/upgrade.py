"""Event upgrades (upcasting): rewrite old events into their current shape as they are read.

An upgrade is a callable `upgrade(events: Iterator[Event]) -> Iterator[Event]`. It sees the
events of one entity in `event_number` order, and only those being read (opening a stream
from event 3 hides events 1 and 2 from it). The same upgrades apply when a stream is read
and when an event is delivered to a subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeAlias

from .event import Event

EventUpgrade: TypeAlias = Callable[[Iterator[Event]], Iterator[Event]]


def apply_upgrades(events: Iterable[Event], upgrades: Sequence[EventUpgrade]) -> Iterator[Event]:
    """Chains the upgrades in order: the first one's output is the second one's input."""
    stream: Iterator[Event] = iter(events)
    for upgrade in upgrades:
        stream = upgrade(stream)
    return stream
