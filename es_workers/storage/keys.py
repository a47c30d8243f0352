"""Redis key names. One place, so the layout can be read (and changed) at a glance.

Every key that one append touches carries the hash tag of the entity's partition, `{pN}`,
so the append script stays in one Redis Cluster slot. Order is kept per entity (and per
partition in the outbox), never globally.
"""

from __future__ import annotations

import re
import zlib

from ..errors import ConfigurationError

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
        return zlib.crc32(f"{entity_type}/{entity_id}".encode()) % self.partitions

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

    def append_keys(self, entity_type: str, entity_id: str) -> list[str]:
        """append.lua's KEYS for the entity: its stream, then its partition's heads, entity
        index and outbox (the partition computed once: this runs on every append)."""
        tag = self.tag(self.partition(entity_type, entity_id))
        return [
            f"{tag}:stream:{entity_type}:{entity_id}",
            f"{tag}:heads:{entity_type}",
            f"{tag}:index:{entity_type}",
            f"{tag}:outbox",
        ]

    # Kept by subscribers, per (subscriber, entity type, partition).
    def checkpoints(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.tag(partition)}:checkpoints:{subscriber_id}:{entity_type}"

    def failures(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.tag(partition)}:failures:{subscriber_id}:{entity_type}"

    def parked(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.tag(partition)}:parked:{subscriber_id}:{entity_type}"

    def lock(self, subscriber_id: str, entity_type: str, entity_id: str) -> str:
        partition = self.partition(entity_type, entity_id)
        return f"{self.tag(partition)}:lock:{subscriber_id}:{entity_type}:{entity_id}"

    def due(self, subscriber_id: str, partition: int) -> str:
        """Notices sent but not yet seen handled: re-sent if still lagging when due."""
        return f"{self.tag(partition)}:due:{subscriber_id}"

    # Not per entity.
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def caught_up(self, entity_type: str) -> str:
        """Set of subscriber IDs that have been handed the entity type's history."""
        return f"{self.prefix}:caught-up:{entity_type}"

    def catch_up_cursor(self, entity_type: str, subscriber_id: str) -> str:
        return f"{self.prefix}:catch-up:{entity_type}:{subscriber_id}"
