"""The scavenger on Redis: removes what truncations and retention limits allow, and never an
event a subscriber has not handled (guarantee 12).

Per entity type and partition: first each entity's `Retention` becomes a truncation
(truncate.lua, which never moves back); then the events of each truncated entity before
both its first kept event and every subscriber's checkpoint are removed from its stream.
`KeepBound`s (an archive's: the first event it has not confirmed) hold back removal the same
way as checkpoints. Everything goes in bounded steps (`batch` entities per scan, `batch`
entries per XTRIM), one command at a time: no script runs long, and appends go on
meanwhile (they only add after the head; XTRIM MINID only removes before the number
given). The entity's head and its
stream's last ID stay, so numbering never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..retention import KeepBound, Retention, Scavenged, first_kept_by_count, removable_before
from .entries import flat_entries, xrange
from .keys import RedisKeys, text
from .state import SubscriberState

Truncate = Callable[[str, Sequence[tuple[str, int]]], None]
"""Truncates entities of one type and partition (entity ID, first kept), in one round trip
(`RedisStorage.truncate_many`)."""
ENTRIES_PER_ROUND = 5000  # entries read and removed per pipeline (one round trip)


class RedisScavenger:
    def __init__(self, client: Any, keys: RedisKeys, state: SubscriberState,
                 truncate: Truncate, *, batch: int = 500,
                 bounds: Sequence[KeepBound] = (), archived: bool = False) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.client, self.keys, self.state = client, keys, state
        self.truncate, self.batch, self.bounds = truncate, batch, list(bounds)
        # With an archive, archived entities are candidates too, truncated or not: their
        # archived events may leave Redis (reads go through the archive). The archive's
        # KeepBound (archiver.ArchiveBound, in `bounds`) keeps every event past the mark.
        self.archived = archived

    def run(self, retention: Mapping[str, Retention],
            subscribers: Mapping[str, Sequence[str]]) -> Scavenged:
        """Scavenges every entity type of `subscribers` (entity type -> every subscriber ID
        that reads it) and of `retention`."""
        done = Scavenged()
        for entity_type in sorted({*subscribers, *retention}):
            for partition in range(self.keys.partitions):
                if entity_type in retention:
                    self._apply(retention[entity_type], entity_type, partition)
                done += self._remove(entity_type, partition,
                                     list(subscribers.get(entity_type, ())))
        return done

    def _apply(self, limits: Retention, entity_type: str, partition: int) -> None:
        """Turns the limits into truncations of the partition's entities of the type (those
        that move: `batch` per round trip)."""
        current = dict(self._scan(self.keys.truncated(entity_type, partition)))
        wanted = []
        for entity_id, head in self._scan(self.keys.heads(entity_type, partition)):
            kept = max(first_kept_by_count(limits, head), self._kept_by_age(
                limits, entity_type, entity_id, head))
            if kept > current.get(entity_id, 1):
                wanted.append((entity_id, kept))
        for start in range(0, len(wanted), self.batch):
            self.truncate(entity_type, wanted[start:start + self.batch])

    def _kept_by_age(self, limits: Retention, entity_type: str, entity_id: str,
                     head: int) -> int:
        """The first event younger than `max_age` among the oldest `batch` stored (the
        newest event is always kept; a later run goes on from there)."""
        if limits.max_age is None:
            return 1
        cutoff = (datetime.now(UTC) - limits.max_age).timestamp() * 1_000_000
        entries = flat_entries(xrange(self.client, self.keys.stream(entity_type, entity_id),
                                      "-", "+", count=self.batch))
        for entry_id, fields in entries:
            values = {text(name): value for name, value in zip(fields[::2], fields[1::2],
                                                                 strict=True)}
            stored = values.get("t")
            if stored is not None and text(stored).isdigit() and int(stored) >= cutoff:
                return _number(entry_id)
        return min(head, _number(entries[-1][0]) + 1) if entries else 1

    def _remove(self, entity_type: str, partition: int,
                subscriber_ids: list[str]) -> Scavenged:
        done = Scavenged()
        truncated = self.keys.truncated(entity_type, partition)
        candidates = dict(self._scan(truncated))
        if self.archived:  # "<archived up to> ...": up to the mark may go (read through)
            for entity_id, number in self._scan(self.keys.archived(entity_type, partition)):
                candidates[entity_id] = max(candidates.get(entity_id, 1), number + 1)
        page: list[tuple[str, int]] = []
        for entity_id, kept in candidates.items():
            page.append((entity_id, kept))
            if len(page) == self.batch:
                done += self._remove_page(entity_type, partition, subscriber_ids, page)
                page = []
        return done + self._remove_page(entity_type, partition, subscriber_ids, page)

    def _remove_page(self, entity_type: str, partition: int, subscriber_ids: list[str],
                     page: list[tuple[str, int]]) -> Scavenged:
        if not page:
            return Scavenged()
        ids = [entity_id for entity_id, _ in page]
        handled = self.state.least_handled(subscriber_ids, entity_type, partition, ids)
        needed = [list(bound.first_needed(entity_type, ids)) for bound in self.bounds]
        targets = []
        for i, ((entity_id, kept), least) in enumerate(zip(page, handled, strict=True)):
            before = removable_before(kept, [least], [numbers[i] for numbers in needed])
            if before > 1:
                targets.append((self.keys.stream(entity_type, entity_id), before))
        return self._remove_before(targets)

    def _remove_before(self, targets: list[tuple[str, int]]) -> Scavenged:
        """Removes each stream's entries numbered below its `before`: at most `batch` per
        stream per XTRIM, and about ENTRIES_PER_ROUND per round trip (the entries are read
        in the same pipeline, just before, for their size)."""
        pipe = self.client.pipeline(transaction=False)
        for stream, _ in targets:
            pipe.xrange(stream, "-", "+", count=1)
        # (stream, first stored, before) of the streams with something to remove
        left = [(stream, _number(first[0][0]), before)
                for (stream, before), first in zip(targets, pipe.execute(), strict=True)
                if first and _number(first[0][0]) < before]
        events = size = 0
        removed_from: set[str] = set()
        while left:
            pipe, sent, entries_sent, later = self.client.pipeline(transaction=False), [], 0, []
            for stream, first, before in left:
                count = min(self.batch, before - first)
                if entries_sent and entries_sent + count > ENTRIES_PER_ROUND:
                    later.append((stream, first, before))
                    continue
                xrange(pipe, stream, f"{first}-0", f"{first + count - 1}-0")
                pipe.xtrim(stream, minid=f"{first + count}-0", approximate=False)
                sent.append((stream, first + count, before))
                entries_sent += count
            replies = pipe.execute()
            for (stream, next_first, before), entries, trimmed in zip(
                    sent, replies[::2], replies[1::2], strict=True):
                size += sum(len(value) for _, fields in flat_entries(entries)
                            for value in fields)
                events += int(trimmed)
                if trimmed:
                    removed_from.add(stream)
                if next_first < before:
                    later.append((stream, next_first, before))
            left = later
        return Scavenged(len(removed_from), events, size)

    def _scan(self, key: str) -> list[tuple[str, int]]:
        """The hash's entity IDs with the number each field starts with, `batch` per
        HSCAN call."""
        found = []
        for field, value in self.client.hscan_iter(key, count=self.batch):
            number = text(value).split(" ", 1)[0]
            if number.isdigit():
                found.append((text(field), int(number)))
        return found


def _number(entry_id: bytes | str) -> int:
    return int(text(entry_id).split("-", 1)[0])
