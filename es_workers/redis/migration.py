"""Renaming a prefix's keys from the `{pN}` hash tags to the ones `keys.partition_tag`
chooses (`es-workers migrate-keys`). A storage refuses a prefix not yet renamed
(opening.py).

Each key is copied with DUMP and RESTORE (a stream keeps its last ID and consumer groups;
on a cluster the new name may live on another master, where RENAME cannot reach) and then
deleted; the meta hash records the new layout last. Nothing may run on the prefix
meanwhile. Run again after a failure, it picks up where it stopped: a key copied but not
yet deleted is copied again over its copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from .entries import stored_partitions
from .keys import LAYOUT, RedisKeys, text


@dataclass(frozen=True)
class Migrated:
    """What `migrate_keys` did: keys renamed (0 when the prefix had the new layout)."""

    keys: int
    already: bool


def needs_migration(client: Any, prefix: str) -> bool:
    """Whether the prefix exists with the old `{pN}` tags."""
    meta = RedisKeys(prefix, 1).meta()
    return client.hget(meta, "partitions") is not None and client.hget(meta, "layout") is None


def migrate_keys(client: Any, prefix: str,
                 progress: Callable[[int], None] | None = None) -> Migrated:
    """Renames every key of `prefix` under a `{pN}` tag to its partition's new tag, then
    records the layout. Refuses a prefix that does not exist."""
    meta = RedisKeys(prefix, 1).meta()
    stored = client.hget(meta, "partitions")
    if stored is None:
        raise ConfigurationError(f"no prefix {prefix!r} in this Redis ({meta} is missing)")
    keys = stored_partitions(prefix, None, stored)
    if client.hget(meta, "layout") is not None:
        return Migrated(0, already=True)
    old = re.compile(rf"{re.escape(prefix)}:\{{p(\d+)\}}(:.*)", re.DOTALL)
    moved = 0
    for raw in list(client.scan_iter(match=f"{prefix}:{{p*}}:*", count=1000)):
        name = text(raw)
        found = old.fullmatch(name)
        if found is None or int(found[1]) >= keys.partitions:
            continue
        _copy(client, raw, keys.tag(int(found[1])) + found[2])
        moved += 1
        if progress is not None:
            progress(moved)
    client.hset(meta, "layout", LAYOUT)
    return Migrated(moved, already=False)


def _copy(client: Any, key: Any, new: str) -> None:
    dumped = client.dump(key)
    if dumped is None:  # gone meanwhile
        return
    ttl = client.pttl(key)
    client.restore(new, max(int(ttl), 0), dumped, replace=True)
    client.delete(key)
