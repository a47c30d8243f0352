"""Retention: how much of an entity's history is kept. `truncate_before` marks the events
before a number as no longer kept (reads from before it raise TruncatedError at once); a
`Retention` per entity type (`Store(..., retention={...})`) limits each entity's events by
count and age, applied when the scavenger runs. Numbering never changes: the next write
after a truncation takes the next number, and the optimistic check works as before."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from .names import check_entity_id, check_entity_type


@dataclass(frozen=True)
class Retention:
    """Keep at most `max_count` events of each entity (its newest), and none older than
    `max_age` (but always its newest event, so its state can be read from a snapshot);
    None: no limit of that kind."""

    max_count: int | None = None
    max_age: timedelta | None = None

    def __post_init__(self) -> None:
        count, age = self.max_count, self.max_age
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                                  or count < 1):
            raise ValueError(f"Retention.max_count must be an int >= 1 or None, got {count!r}")
        if age is not None and (not isinstance(age, timedelta) or age <= timedelta(0)):
            raise ValueError(f"Retention.max_age must be a positive timedelta or None, got "
                             f"{age!r}")


def check_retention(retention: Mapping[str, Retention] | None) -> dict[str, Retention]:
    """The retention per entity type, checked."""
    checked: dict[str, Retention] = {}
    for entity_type, limits in (retention or {}).items():
        check_entity_type(entity_type)
        if not isinstance(limits, Retention):
            raise ValueError(f"retention[{entity_type!r}] must be a Retention, got {limits!r}")
        checked[entity_type] = limits
    return checked


def check_truncate(entity_type: str, entity_id: str, event_number: int) -> None:
    """Checks the arguments of `truncate_before`."""
    check_entity_type(entity_type)
    check_entity_id(entity_id)
    if not isinstance(event_number, int) or isinstance(event_number, bool) or event_number < 1:
        raise ValueError(f"event_number must be an int >= 1, got {event_number!r}")


def beyond_head(entity_type: str, entity_id: str, event_number: int, head: int) -> ValueError:
    return ValueError(
        f"{entity_type} {entity_id!r} has events up to {head}: it cannot be truncated before "
        f"event {event_number} (at most {head + 1}, which keeps none of them)")


@dataclass(frozen=True)
class Scavenged:
    """What a scavenge removed: events of how many entities, how many, and their stored
    bytes (the entries' fields, as the storage holds them)."""

    entities: int = 0
    events: int = 0
    bytes: int = 0

    def __add__(self, other: Scavenged) -> Scavenged:
        return Scavenged(self.entities + other.entities, self.events + other.events,
                         self.bytes + other.bytes)


def first_kept_by_count(limits: Retention, head: int) -> int:
    """The first event `max_count` keeps (1: all)."""
    if limits.max_count is None:
        return 1
    return max(1, head - limits.max_count + 1)


def removable_before(first_kept: int, handled: Sequence[int],
                     needed: Sequence[int] = ()) -> int:
    """The first event the scavenger must keep: the first kept, the first event a
    subscriber has not handled (`handled`: each subscriber's checkpoint), or the first a
    `KeepBound` still needs (`needed`), whichever is lowest."""
    return min([first_kept, *(number + 1 for number in handled), *needed])


@runtime_checkable
class KeepBound(Protocol):
    """Someone besides the subscribers whose events the scavenger must keep: e.g. an
    archive, which needs every event it has not confirmed (guarantee 12). Registered with
    `RedisStorage.keep_bounds.append(bound)`; the scavenger asks it once per page of
    entities (of one entity type and partition) and removes nothing at or after the number
    it gives for an entity. A bound that fails stops the scavenge (nothing removed past
    what it could not tell)."""

    def first_needed(self, entity_type: str, entity_ids: Sequence[str]) -> Sequence[int]:
        """For each entity, the first event number still needed (a number past the
        entity's head: none)."""
        ...


@dataclass(frozen=True)
class HotWindow:
    """With an archive (`ES_ARCHIVE_URL`): the events of each entity kept hot in Redis, its
    newest `events` (0: none) and, with `age`, none older than that (but then always its
    newest event);
    older ones are copied to the archive, then removed from Redis by the scavenger. Reads
    see no difference. None: that limit is the setting's (`ES_ARCHIVE_AFTER`,
    `ES_ARCHIVE_AFTER_AGE_MS`)."""

    events: int | None = None
    age: timedelta | None = None

    def __post_init__(self) -> None:
        if self.events is not None and (not isinstance(self.events, int)
                                        or isinstance(self.events, bool) or self.events < 0):
            raise ValueError(f"HotWindow.events must be an int >= 0 or None, got "
                             f"{self.events!r}")
        if self.age is not None and (not isinstance(self.age, timedelta)
                                     or self.age <= timedelta(0)):
            raise ValueError(f"HotWindow.age must be a positive timedelta or None, got "
                             f"{self.age!r}")

    def over(self, default: HotWindow) -> HotWindow:
        """This window, its unset limits taken from `default`."""
        return HotWindow(self.events if self.events is not None else default.events,
                         self.age if self.age is not None else default.age)

    def archive_up_to(self, head: int) -> int:
        """The last event number the count limit lets go cold (0: none)."""
        return max(0, head - (self.events if self.events is not None else head))


def check_hot_windows(windows: Mapping[str, HotWindow] | None) -> dict[str, HotWindow]:
    """The hot window per entity type, checked."""
    checked: dict[str, HotWindow] = {}
    for entity_type, window in (windows or {}).items():
        check_entity_type(entity_type)
        if not isinstance(window, HotWindow):
            raise ValueError(f"archive[{entity_type!r}] must be a HotWindow, got {window!r}")
        checked[entity_type] = window
    return checked
