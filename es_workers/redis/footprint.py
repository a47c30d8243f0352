"""What an entity type costs in Redis memory and what a scavenge would free, estimated from
a sample of its entities (`es-workers status`, `--json`, the dashboard).

Per partition, up to `sample` entities (HRANDFIELD on the heads) are looked at: their
stream's `MEMORY USAGE` and length, their truncation and the lowest checkpoint of the
subscribers. The figures of the sample are scaled up to every entity of the type. What a
scavenge would free counts the stored events before both the first kept event (the
truncation, or `max_count` of the type's `Retention`; `max_age` is not looked at, so the
estimate can be low) and every subscriber's checkpoint, at the sampled streams' bytes per
event. A server that refuses MEMORY (fakeredis; a user without @dangerous) gives no bytes
(None), only events. A handful of commands per partition, never a scan of every entity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ..retention import KeepBound, Retention, first_kept_by_count, removable_before
from .entries import truncation
from .keys import RedisKeys, text
from .state import SubscriberState

SAMPLE = 20  # entities per partition


@dataclass(frozen=True)
class Footprint:
    """An entity type's estimated cost: entities, events stored, memory in bytes (None:
    the server would not tell), and what a scavenge would free now (events, bytes)."""

    entity_type: str
    entities: int
    stored_events: int
    memory_bytes: int | None
    removable_events: int
    removable_bytes: int | None
    removals: int = 0  # deletes and tombstones recorded (es_workers.removal), if counted


@dataclass
class _Sampled:
    entities: int = 0
    looked_at: int = 0
    stored: int = 0
    memory: int = 0
    removable: int = 0
    removable_memory: float = 0.0


def footprint(client: Any, keys: RedisKeys, state: SubscriberState, entity_type: str,
              retention: Retention | None, subscriber_ids: Sequence[str],
              sample: int = SAMPLE, *, bounds: Sequence[KeepBound] = (),
              archived: bool = False) -> Footprint:
    """The entity type's estimated footprint (see the module's doc). `bounds` and
    `archived` as the scavenger's: what a `KeepBound` needs is not removable, and with an
    archive an entity's events up to its archived mark are."""
    total, measured = _Sampled(), True
    for partition in range(keys.partitions):
        part, ok = _partition(client, keys, state, entity_type, partition, retention,
                              subscriber_ids, sample, bounds, archived)
        measured = measured and ok
        scale = part.entities / part.looked_at if part.looked_at else 0.0
        total.entities += part.entities
        total.stored += round(part.stored * scale)
        total.memory += round(part.memory * scale)
        total.removable += round(part.removable * scale)
        total.removable_memory += part.removable_memory * scale
    return Footprint(entity_type, total.entities, total.stored,
                     total.memory if measured else None, total.removable,
                     round(total.removable_memory) if measured else None)


def _partition(client: Any, keys: RedisKeys, state: SubscriberState, entity_type: str,
               partition: int, retention: Retention | None, subscriber_ids: Sequence[str],
               sample: int, bounds: Sequence[KeepBound] = (),
               archived: bool = False) -> tuple[_Sampled, bool]:
    heads_key = keys.heads(entity_type, partition)
    found = _Sampled(entities=int(client.hlen(heads_key)))
    if not found.entities:
        return found, True
    ids = [text(i) for i in client.hrandfield(heads_key, sample) or []]
    if not ids:
        return found, True
    pipe = client.pipeline(transaction=False)
    pipe.hmget(heads_key, ids)
    pipe.hmget(keys.truncated(entity_type, partition), ids)
    pipe.hmget(keys.archived(entity_type, partition), ids)
    for entity_id in ids:
        stream = keys.stream(entity_type, entity_id)
        pipe.xlen(stream)
        pipe.xinfo_stream(stream)
    replies = pipe.execute(raise_on_error=False)
    heads, truncations, marks, per_stream = replies[0], replies[1], replies[2], replies[3:]
    handled = state.least_handled(list(subscriber_ids), entity_type, partition, ids)
    needed = [list(bound.first_needed(entity_type, ids)) for bound in bounds]
    memory = _memory(client, [keys.stream(entity_type, i) for i in ids])
    found.looked_at = len(ids)
    for i in range(len(ids)):
        length, info = per_stream[2 * i], per_stream[2 * i + 1]
        if not isinstance(length, int) or not isinstance(info, dict) or not length:
            continue
        head = int(heads[i] or 0)
        kept = truncation(truncations[i])[0] if truncations[i] is not None else 1
        if retention is not None:
            kept = max(kept, first_kept_by_count(retention, head))
        if archived and marks[i] is not None:  # up to the mark may go (read through)
            kept = max(kept, int(text(marks[i]).split(" ", 1)[0]) + 1)
        first_stored = int(text(info["first-entry"][0]).split("-")[0])
        before = removable_before(kept, [handled[i]], [numbers[i] for numbers in needed])
        removable = max(0, before - first_stored)
        found.stored += length
        found.removable += removable
        if memory is not None:
            found.memory += memory[i]
            found.removable_memory += memory[i] * removable / length
    return found, memory is not None


def _memory(client: Any, streams: list[str]) -> list[int] | None:
    """MEMORY USAGE of each stream, None if the server refuses the command."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.memory_usage(stream)
    try:
        replies = pipe.execute(raise_on_error=True)
    except redis.exceptions.ResponseError:
        return None
    return [int(r or 0) for r in replies]
