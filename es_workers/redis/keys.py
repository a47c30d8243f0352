"""Redis key names of the entity streams and the outbox. Subscriber state has its keys in
`state.py`, which alone uses them.

Every key that one append touches carries the hash tag of the entity's partition, so the
append script stays in one Redis Cluster slot. Order is kept per entity (and per
partition in the outbox), never globally.

The tag names the prefix, so two prefixes' partitions do not share slots, and is chosen by
its slot (`partition_tag`): partition N of P lands in the N-th P-th of the slot range, so a
cluster whose masters split the slots evenly (as `redis-cli --cluster create` does) serves
as many partitions on each master. Keys written before that used `{pN}` (`legacy_tag`); a
storage refuses such a prefix until `es-workers migrate-keys` renamed them (migration.py).
"""

from __future__ import annotations

import functools
import re
from binascii import crc_hqx

from ..errors import ConfigurationError
from ..position import partition_of
from .layouts import APPEND


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


_PREFIX = re.compile(r"[A-Za-z0-9_\-.]{1,40}")
SLOTS = 16384  # Redis Cluster's hash slots
_WIDEST_SEARCH = 256  # with more partitions, a tag's slot window is 16384 / 256 slots wide
LAYOUT = "2"  # the meta hash's 'layout' field of a prefix with the tags below


def slot(tag: str) -> int:
    """The Redis Cluster slot of a hash tag (CRC16/XMODEM of it, modulo 16384)."""
    return crc_hqx(tag.encode(), 0) % SLOTS


@functools.lru_cache(maxsize=65536)
def partition_tag(prefix: str, partitions: int, partition: int) -> str:
    """The hash tag of `partition` (without braces): `<prefix>:p<N>.<k>` with the least k
    whose slot falls in the partition's window of the slot range, so the partitions are
    spread evenly over the slots (computed, never stored: the same on every client)."""
    start = partition * SLOTS // partitions
    width = max(SLOTS // partitions, SLOTS // _WIDEST_SEARCH)
    k = 0
    while True:
        tag = f"{prefix}:p{partition}.{k}"
        if (slot(tag) - start) % SLOTS < width:
            return tag
        k += 1


def legacy_tag(prefix: str, partition: int) -> str:
    """The partition's tag before the prefix was in it: `{pN}` (see migration.py)."""
    return f"{prefix}:{{p{partition}}}"


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
        """What every key of the partition starts with: `<prefix>:{<partition tag>}`."""
        return f"{self.prefix}:{{{partition_tag(self.prefix, self.partitions, partition)}}}"

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

    def archived(self, entity_type: str, partition: int) -> str:
        """Hash: entity ID -> `<archived up to> <event 1's store_event_id>` (archived.lua):
        the entity's events up to that number are in the archive (PostgreSQL), so the
        scavenger may remove them from its stream and reads find them there."""
        return f"{self.tag(partition)}:archived:{entity_type}"

    def archiver(self, partition: int) -> str:
        """String: the archiver process that holds the partition (a lease, SET NX PX)."""
        return f"{self.tag(partition)}:archiver"

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
