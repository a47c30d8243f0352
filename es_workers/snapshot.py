"""Snapshots: an entity's state after one of its events, so that hydrating reads only the
events after it (`store.load_snapshot`, then `open_from(snapshot.event_number)`).

A snapshot is a cache, never history: it is kept beside the entity (one per state class),
never in its stream, the outbox or the log, so subscribers never see one. The state is a
pydantic model; its class attribute `snapshot_version` (1 when absent) is stored with it,
and a snapshot of another version is not used: bump the version when the state's meaning
changes and old snapshots are ignored until new ones are saved.

Storages keep `StoredSnapshot`s (bytes and numbers); this module turns states into them and
back, so every storage encodes and refuses alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import EsError
from .event import Event
from .names import check_entity_id, check_entity_type

S = TypeVar("S", bound=BaseModel)


class SnapshotError(EsError, ValueError):
    """A snapshot cannot be saved: its event number is not one of the entity's stored
    events (beyond its head, or removed), or the state is not a pydantic model."""


@dataclass(frozen=True)
class Snapshot(Generic[S]):
    """The entity's `state` after its event `event_number`, written at `event_time`."""

    state: S
    event_number: int
    event_time: datetime


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot as a storage keeps it: under the state class's name, with its version
    (the time of event `event_number` is the storage's to look up)."""

    name: str
    version: int
    event_number: int
    data: bytes


def state_name(state_type: type[BaseModel]) -> str:
    """The name a state class's snapshots are kept under (one snapshot per class)."""
    return state_type.__qualname__


def version_of(state_type: type[BaseModel]) -> int:
    version = getattr(state_type, "snapshot_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SnapshotError(
            f"{state_type.__qualname__}.snapshot_version must be an int >= 1, got {version!r}")
    return version


def to_store(entity_type: str, entity_id: str, state: BaseModel,
             event_number: int) -> StoredSnapshot:
    """Checks the arguments of `save_snapshot` and encodes the state."""
    check_entity_type(entity_type)
    check_entity_id(entity_id)
    if not isinstance(state, BaseModel):
        raise SnapshotError(f"a snapshot's state is a pydantic model, not {type(state).__name__}")
    if not isinstance(event_number, int) or isinstance(event_number, bool) or event_number < 1:
        raise SnapshotError(f"event_number must be an int >= 1, got {event_number!r}")
    return StoredSnapshot(state_name(type(state)), version_of(type(state)), event_number,
                          state.model_dump_json().encode())


def from_store(found: tuple[StoredSnapshot, datetime] | None,
               state_type: type[S]) -> Snapshot[S] | None:
    """The snapshot a storage found (with its event's time), if it is usable: of the state
    class's current version, and valid. A snapshot that no longer validates is ignored like
    one of another version (it is only a cache: the events are the truth)."""
    if found is None or found[0].version != version_of(state_type):
        return None
    stored, event_time = found
    try:
        state = state_type.model_validate_json(stored.data)
    except ValidationError:
        return None
    return Snapshot(state, stored.event_number, event_time)


def beyond_head(entity_type: str, entity_id: str, event_number: int, head: int) -> SnapshotError:
    return SnapshotError(
        f"{entity_type} {entity_id!r} has events up to {head}: no snapshot after event "
        f"{event_number} can be saved (save the state after an event that was written)")


def not_stored(entity_type: str, entity_id: str, event_number: int) -> SnapshotError:
    return SnapshotError(
        f"{entity_type} {entity_id!r} no longer holds event {event_number}: a snapshot after "
        "it would never be used (save one after a later event)")


def snapshot_subscriber_id(state_type: type[BaseModel]) -> str:
    """The default subscriber ID of `Store.snapshot_every` for a state class."""
    return "snapshot_" + re.sub(r"[^A-Za-z0-9_\-]", "_", state_type.__qualname__)[:70]


def take_snapshot(
    load: Callable[[], Snapshot[S] | None],
    read: Callable[[int], Iterable[Event]],
    project: Callable[[S | None, Event], S],
    event_number: int,
) -> S | None:
    """The state after event `event_number`: the newest usable snapshot (`load`), with the
    events after it (`read(after)`) projected on it. None when a snapshot at or after that
    event is there already (nothing to save)."""
    found = load()
    if found is not None and found.event_number >= event_number:
        return None
    state = found.state if found is not None else None
    for event in read(found.event_number if found is not None else 0):
        if event.event_number > event_number:
            break
        state = project(state, event)
    return state
