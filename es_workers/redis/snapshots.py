"""Snapshots and truncations in Redis (see `es_workers.snapshot`, `es_workers.retention`):
snapshots in one hash per entity beside its stream, with the entity's hash tag, a field per
state class (`snapshot.lua`); truncations in a hash per entity type and partition
(`truncate.lua`). These functions build the scripts' arguments and read their replies, so
`RedisStorage` and `AsyncRedisStorage` agree. No I/O here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import StreamDeletedError
from ..retention import beyond_head as truncation_beyond_head
from ..snapshot import StoredSnapshot, beyond_head, not_stored
from .keys import RedisKeys
from .layouts import REMOVE, SNAPSHOT, TRUNCATE

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def snapshot_keys(keys: RedisKeys, entity_type: str, entity_id: str) -> list[str]:
    """snapshot.lua's KEYS: the entity's stream, its partition's heads, its snapshots, its
    partition's truncations."""
    partition = keys.partition(entity_type, entity_id)
    return SNAPSHOT.keys.pack(stream=keys.stream(entity_type, entity_id),
                              heads=keys.heads(entity_type, partition),
                              snapshots=keys.snapshots(entity_type, entity_id),
                              truncated=keys.truncated(entity_type, partition))


def snapshot_args(entity_id: str, stored: StoredSnapshot) -> list[Any]:
    return SNAPSHOT.args.pack(id=entity_id, name=stored.name, version=stored.version,
                              number=stored.event_number, data=stored.data)


def truncate_keys(keys: RedisKeys, entity_type: str, entity_id: str) -> list[str]:
    """truncate.lua's KEYS: the entity's stream, its partition's heads and truncations."""
    partition = keys.partition(entity_type, entity_id)
    return TRUNCATE.keys.pack(stream=keys.stream(entity_type, entity_id),
                              heads=keys.heads(entity_type, partition),
                              truncated=keys.truncated(entity_type, partition))


def truncate_args(entity_id: str, event_number: int) -> list[Any]:
    """truncate.lua's ARGV: the entity, its first event number to keep."""
    return TRUNCATE.args.pack(id=entity_id, kept=event_number)


def remove_keys(keys: RedisKeys, entity_type: str, entity_id: str) -> list[str]:
    """remove.lua's KEYS: the entity's stream, its partition's heads, index and
    truncations, its snapshots."""
    partition = keys.partition(entity_type, entity_id)
    return REMOVE.keys.pack(stream=keys.stream(entity_type, entity_id),
                            heads=keys.heads(entity_type, partition),
                            index=keys.index(entity_type, partition),
                            truncated=keys.truncated(entity_type, partition),
                            snapshots=keys.snapshots(entity_type, entity_id))


def remove_args(entity_id: str, mark: str) -> list[Any]:
    """remove.lua's ARGV: the entity, the mark (TOMBSTONED_MARK or DELETED_MARK)."""
    return REMOVE.args.pack(id=entity_id, mark=mark)


def removed(reply: Any) -> int:
    """The head remove.lua answered, -1 when it had nothing to do."""
    return int(reply[1]) if int(reply[0]) == 0 else -1


def check_truncated(entity_type: str, entity_id: str, event_number: int, reply: Any) -> int:
    """The first kept event number truncate.lua answered; ValueError if it refused."""
    outcome, number = int(reply[0]), int(reply[1])
    if outcome == 1:
        raise truncation_beyond_head(entity_type, entity_id, event_number, number)
    return number


def check_saved(entity_type: str, entity_id: str, stored: StoredSnapshot, reply: Any) -> None:
    """Raises SnapshotError if snapshot.lua refused the snapshot."""
    outcome, head = int(reply[0]), int(reply[1])
    if outcome == 1:
        raise beyond_head(entity_type, entity_id, stored.event_number, head)
    if outcome == 2:
        raise not_stored(entity_type, entity_id, stored.event_number)
    if outcome == 3:
        raise StreamDeletedError(entity_type, entity_id)


def loaded(name: str, value: bytes | str | None,
           truncated: bytes | str | None) -> tuple[StoredSnapshot, datetime] | None:
    """The snapshot a field holds, given the entity's truncation (None: there is none, it is
    before the first kept event, or it is not one snapshot.lua wrote: a snapshot is a
    cache, and a broken one is as good as none)."""
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else value
    parts = raw.split(b" ", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        return None
    version, number, micros = (int(p) for p in parts[:3])
    kept = (truncated.decode() if isinstance(truncated, bytes) else truncated or "").split(" ")[0]
    if kept.isdigit() and number + 1 < int(kept):
        return None
    try:
        event_time = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None
    return StoredSnapshot(name, version, number, parts[3]), event_time
