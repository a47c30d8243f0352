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

Truncate = Callable[[str, str, int], int]
"""`RedisStorage.truncate_before`."""


class RedisScavenger:
    def __init__(self, client: Any, keys: RedisKeys, state: SubscriberState,
                 truncate: Truncate, *, batch: int = 500,
                 bounds: Sequence[KeepBound] = ()) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.client, self.keys, self.state = client, keys, state
        self.truncate, self.batch, self.bounds = truncate, batch, list(bounds)

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
        """Turns the limits into truncations of the partition's entities of the type."""
        heads = self.keys.heads(entity_type, partition)
        for entity_id, head in self._scan(heads):
            kept = max(first_kept_by_count(limits, head), self._kept_by_age(
                limits, entity_type, entity_id, head))
            if kept > 1:
                self.truncate(entity_type, entity_id, kept)

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
        page: list[tuple[str, int]] = []
        for entity_id, kept in self._scan(truncated):
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
        done = Scavenged()
        for i, ((entity_id, kept), least) in enumerate(zip(page, handled, strict=True)):
            before = removable_before(kept, [least], [numbers[i] for numbers in needed])
            if before > 1:
                done += self._remove_before(self.keys.stream(entity_type, entity_id), before)
        return done

    def _remove_before(self, stream: str, before: int) -> Scavenged:
        """Removes the stream's entries numbered below `before`, `batch` at a time."""
        events = size = 0
        while True:
            entries = flat_entries(xrange(self.client, stream, "-", f"{before - 1}-0",
                                          count=self.batch))
            if not entries:
                break
            size += sum(len(value) for _, fields in entries for value in fields)
            last = _number(entries[-1][0])
            events += int(self.client.xtrim(stream, minid=f"{last + 1}-0", approximate=False))
            if len(entries) < self.batch:
                break
        return Scavenged(1 if events else 0, events, size)

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
