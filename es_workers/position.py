"""Position: where an event sits in its partition's log (the order events were committed).

Each partition has one log, numbered from 1 with no gaps; with one partition the log is a
total order of every event. The text form `p<partition>:<number>` (e.g. `p0:42`) is for
URLs and the command line; `Position.parse` reads it back.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from typing import NamedTuple, TypeAlias

_TEXT = re.compile(r"p(\d{1,4}):(\d{1,19})")


class Position(NamedTuple):
    """An event's place in the log of its partition: ordered by (partition, number).

    A tuple, so it is cheap to make for every event read, frozen, hashable and ordered;
    numbers only compare meaningfully within one partition."""

    partition: int
    number: int

    def __str__(self) -> str:
        return f"p{self.partition}:{self.number}"

    @classmethod
    def parse(cls, value: str) -> Position:
        """The Position of a text form `p<partition>:<number>`; ValueError otherwise."""
        found = _TEXT.fullmatch(value.strip()) if isinstance(value, str) else None
        if found is None:
            raise ValueError(f"not a position: {value!r} (expected p<partition>:<number>, "
                             "e.g. p0:42)")
        return cls(int(found[1]), int(found[2]))


After: TypeAlias = Position | Iterable[Position] | Mapping[int, Position] | None
"""Where a log read starts: None (each partition from its start), one Position, or several
(an iterable, or a mapping partition -> Position; the greatest per partition counts); a
partition not named is read from its start."""


def after_by_partition(after: After) -> dict[int, int]:
    """`after` as partition -> number read (0: from the start), for the partitions named;
    of several positions in one partition the greatest counts (e.g. those a write
    returned)."""
    if after is None:
        return {}
    if isinstance(after, Position):
        after = [after]
    if isinstance(after, str):
        raise TypeError("after is a Position (use Position.parse for its text form)")
    positions = after.values() if isinstance(after, Mapping) else after
    found: dict[int, int] = {}
    for position in positions:
        if not isinstance(position, Position):
            raise TypeError(f"after holds {position!r}, not a Position")
        if position.number < 0 or position.partition < 0:
            raise ValueError(f"a position's partition and number are >= 0, got {position!r}")
        if position.number > found.get(position.partition, -1):
            found[position.partition] = position.number
    return found


def partition_of(entity_type: str, entity_id: str, partitions: int) -> int:
    """The partition an entity lives in (its log, and on Redis its keys' hash tag)."""
    return zlib.crc32(f"{entity_type}/{entity_id}".encode()) % partitions


def parse_after(text: str) -> list[Position]:
    """Positions from a comma-separated text form, e.g. `p0:42,p3:7` (the CLI's --after)."""
    return [Position.parse(part) for part in text.split(",") if part.strip()]


def trim_from(last: int, keep: int, followed: Iterable[int], young: int | None = None) -> int:
    """The first log number to keep of a log whose last is `last`: the last `keep`, the
    first `young` one (the first younger than the time kept) and everything after it, and
    everything after the least number a follower has done; the last entry always stays
    (on Redis the append script reads the log's last number from it)."""
    first = last - keep + 1
    if young is not None:
        first = min(first, young)
    done = list(followed)
    if done:
        first = min(first, min(done) + 1)
    return max(1, min(first, last))


def check_log_keep(keep: int | None, keep_for_ms: int | None) -> None:
    """Checks `trim_logs`' arguments: at least one, each >= 1."""
    if keep is None and keep_for_ms is None:
        raise ValueError("trim_logs needs keep (positions) or keep_for_ms (time), or both")
    for name, value in (("keep", keep), ("keep_for_ms", keep_for_ms)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
