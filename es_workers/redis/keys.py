"""Redis key names of the entity streams and the outbox. Subscriber state has its keys in
`state.py`, which alone uses them.

Every key that one append touches carries the hash tag of the entity's partition, `{pN}`,
so the append script stays in one Redis Cluster slot. Order is kept per entity (and per
partition in the outbox), never globally.
"""

from __future__ import annotations

import re

from ..errors import ConfigurationError
from ..position import partition_of
from .layouts import APPEND


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


_PREFIX = re.compile(r"[A-Za-z0-9_\-.]{1,40}")


class RedisKeys:
    def __init__(self, prefix: str, partitions: int) -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"invalid key prefix {prefix!r}: use 1 to 40 letters, digits, '_', '-' or '.'"
            )
        if not isinstance(partitions, int) or not 1 <= partitions <= 4096:
            raise ConfigurationError(f"partitions must be 1..4096, got {partitions!r}")
        self.prefix = prefix
        self.partitions = partitions

    def partition(self, entity_type: str, entity_id: str) -> int:
        return partition_of(entity_type, entity_id, self.partitions)

    def tag(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}"

    # Written by the append script.
    def stream(self, entity_type: str, entity_id: str) -> str:
        return self.append_keys(entity_type, entity_id)[0]

    def heads(self, entity_type: str, partition: int) -> str:
        return f"{self.tag(partition)}:heads:{entity_type}"

    def index(self, entity_type: str, partition: int) -> str:
        return f"{self.tag(partition)}:index:{entity_type}"

    def outbox(self, partition: int) -> str:
        return f"{self.tag(partition)}:outbox"

    def log(self, partition: int) -> str:
        """The partition's log: one entry per event, in commit order (append.lua)."""
        return f"{self.tag(partition)}:log"

    def followers(self, partition: int) -> str:
        """Hash: follower name -> the partition's log number it has done (`store.follow(...,
        name=...)`); the log is never trimmed past the least of them."""
        return f"{self.tag(partition)}:log:followers"

    def truncated(self, entity_type: str, partition: int) -> str:
        """Hash: entity ID -> `<first kept event number> <event 1's store_event_id>`
        (truncate.lua): reads before it raise TruncatedError; the scavenger removes what is
        before it."""
        return f"{self.tag(partition)}:truncated:{entity_type}"

    def snapshots(self, entity_type: str, entity_id: str) -> str:
        """Hash: state class name -> the entity's snapshot (snapshot.lua); beside its
        stream, never in it."""
        tag = self.tag(self.partition(entity_type, entity_id))
        return f"{tag}:snapshot:{entity_type}:{entity_id}"

    def append_keys(self, entity_type: str, entity_id: str) -> list[str]:
        """append.lua's KEYS for the entity: its stream, then its partition's heads, entity
        index, outbox, scratch key, truncations (tombstones are there) and log (the
        partition computed once: this runs on every append)."""
        tag = self.tag(self.partition(entity_type, entity_id))
        return APPEND.keys.pack(
            stream=f"{tag}:stream:{entity_type}:{entity_id}",
            heads=f"{tag}:heads:{entity_type}",
            index=f"{tag}:index:{entity_type}",
            outbox=f"{tag}:outbox",
            scratch=f"{tag}:scratch",
            truncated=f"{tag}:truncated:{entity_type}",
            log=f"{tag}:log",
        )

    def wake(self, partition: int) -> str:
        """The partition's wake-up channel (sharded pub/sub, on its master): append.lua
        names it there when asked to, the cluster publisher listens."""
        return f"{self.tag(partition)}:wake"

    # Not per entity.
    def meta(self) -> str:
        return f"{self.prefix}:meta"
