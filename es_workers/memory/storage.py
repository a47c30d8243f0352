"""InMemoryStorage: a Storage for tests and single-process use. Nothing survives the process."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from ..codec import DEFAULT_MAX_EVENT_BYTES, ContentRegistry, check_size
from ..encryption import FieldCipher, MasterKeys
from ..errors import ConcurrencyError, ConfigurationError, StreamDeletedError, TruncatedError
from ..event import Content, Event
from ..keyring import Keyring
from ..metadata import encode as encode_metadata
from ..names import check_entity_id, check_entity_type
from ..ports import Bus, EventBus
from ..position import Position, check_log_keep, partition_of, trim_from
from ..retention import Retention, Scavenged, first_kept_by_count
from ..retention import beyond_head as truncated_beyond_head
from ..snapshot import StoredSnapshot, beyond_head, not_stored
from ..upgrade import Deletion, Reader, StoredEvents
from .keys import InMemoryKeyStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Record:
    name: str
    data: bytes
    event_time: datetime
    store_event_id: str
    metadata: Mapping[str, str]
    position: Position


class InMemoryStorage:
    """Keeps encoded events in a dict, so decoding behaves as with Redis. With `encryption`,
    `Personal` fields are encrypted with data keys kept in memory (`keyring`).

    Its log has `partitions` partitions (entities spread as on Redis; one by default: a
    total order)."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                 encryption: MasterKeys | None = None, partitions: int = 1) -> None:
        if not isinstance(partitions, int) or not 1 <= partitions <= 4096:
            raise ConfigurationError(f"partitions must be 1..4096, got {partitions!r}")
        self.registry = ContentRegistry()
        self.keyring: Keyring | None = None
        if encryption is not None:
            self.keyring = Keyring(encryption, InMemoryKeyStore())
            self.registry.cipher = FieldCipher(self.keyring)
        self.max_event_bytes = max_event_bytes
        self.partitions = partitions
        self._lock = threading.Lock()
        # Removed events (the scavenger's) are None: an event's number is its index + 1.
        self._streams: dict[tuple[str, str], list[_Record | None]] = {}
        self._first_ids: dict[tuple[str, str], str] = {}  # store_entity_id, kept apart
        # Per partition, (entity type, entity ID, event number) per log number from 1.
        self._logs: list[list[tuple[str, str, int]]] = [[] for _ in range(partitions)]
        self._trimmed = [0] * partitions  # log numbers trimmed away, per partition
        self._followers: dict[str, dict[int, int]] = {}
        self._logged = threading.Condition(self._lock)
        self._order: dict[str, list[tuple[str, str]]] = {}  # type -> [(store_entity_id, id)]
        self._published: queue.Queue[tuple[str, str, int, int]] = queue.Queue()
        # (entity type, entity ID) -> state name -> snapshot: never in a stream or the log.
        self._snapshots: dict[tuple[str, str], dict[str, tuple[StoredSnapshot, datetime]]] = {}
        self._retention: dict[str, Retention] = {}
        self._kept: dict[tuple[str, str], int] = {}
        self._tombstoned: set[tuple[str, str]] = set()
        self._deleted: set[tuple[str, str]] = set()  # read from _kept on (store.delete)

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        self.registry.register(entity_type, *content_types)

    def entity_types(self) -> list[str]:
        return self.registry.entity_types()

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Iterator[Event]:
        """TruncatedError (when iterated) if `after` is before the first kept event; a
        deleted entity reads from its first event after the deletion."""
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        deletion = Deletion()
        return StoredEvents(self._read_kept(entity_type, entity_id, after, deletion), deletion)

    def _read_kept(self, entity_type: str, entity_id: str, after: int,
                   deletion: Deletion) -> Iterator[Event]:
        key = (entity_type, entity_id)
        with self._lock:
            kept = self._kept.get(key, 1)
            tombstoned, deleted = key in self._tombstoned, key in self._deleted
        if tombstoned:
            raise StreamDeletedError(entity_type, entity_id)
        if after + 1 < kept and deleted:
            after = deletion.deleted_through = kept - 1
        elif after + 1 < kept:
            raise TruncatedError.of_entity(entity_type, entity_id, kept)
        yield from self._read(entity_type, entity_id, after)

    def _read(self, entity_type: str, entity_id: str, after: int,
              last: int | None = None) -> Iterator[Event]:
        with self._lock:
            records = list(self._streams.get((entity_type, entity_id), ()))
        if not records:
            return
        store_entity_id = self._first_ids[entity_type, entity_id]
        for number, record in enumerate(records[after:last], start=after + 1):
            if record is None:  # removed: only a log read comes here
                continue
            content = self.registry.decode(
                key=f"memory:{entity_type}:{entity_id}",
                entity_type=entity_type,
                entity_id=entity_id,
                event_number=number,
                name=record.name,
                data=record.data,
            )
            yield Event(
                entity_id=entity_id,
                entity_type=entity_type,
                event_number=number,
                event_time=record.event_time,
                content=content,
                store_event_id=record.store_event_id,
                store_entity_id=store_entity_id,
                metadata=record.metadata,
                position=record.position,
            )

    def write(self, entity_type: str, events: Sequence[Event]) -> list[Position]:
        """Appends the events (see `Storage.write`); returns their log positions."""
        if not events:
            return []
        check_entity_type(entity_type)
        entity_id = check_entity_id(events[0].entity_id)
        expected = events[0].event_number - 1
        for offset, event in enumerate(events, start=1):
            if event.entity_id != entity_id or event.event_number != expected + offset:
                raise ValueError("a write holds events of one entity with consecutive numbers")
        encoded = [self.registry.encode(entity_type, event) for event in events]
        for event, (name, data) in zip(events, encoded, strict=True):
            check_size(event, name, data, encode_metadata(event.metadata), self.max_event_bytes)
        with self._lock:
            if (entity_type, entity_id) in self._tombstoned:
                raise StreamDeletedError(entity_type, entity_id)
            records = self._streams.setdefault((entity_type, entity_id), [])
            if len(records) != expected:
                done = records[expected : expected + len(events)]
                if [r and r.store_event_id for r in done] == [e.store_event_id for e in events]:
                    # a retry of a write that was stored
                    return [r.position for r in done if r is not None]
                raise ConcurrencyError(entity_type, entity_id, expected, len(records))
            partition = partition_of(entity_type, entity_id, self.partitions)
            log = self._logs[partition]
            positions = []
            for event, (name, data) in zip(events, encoded, strict=True):
                log.append((entity_type, entity_id, event.event_number))
                positions.append(Position(partition, len(log) + self._trimmed[partition]))
                records.append(
                    _Record(name, data, event.event_time, event.store_event_id,
                            MappingProxyType(dict(event.metadata)), positions[-1])
                )
            self._logged.notify_all()
            if expected == 0:
                self._first_ids[entity_type, entity_id] = events[0].store_event_id
            if expected == 0 or (
                    (entity_type, entity_id) in self._deleted
                    and self._kept.get((entity_type, entity_id)) == expected + 1):
                # new, or the first write after a delete: listed (again)
                self._order.setdefault(entity_type, []).append(
                    (self._first_ids[entity_type, entity_id], entity_id)
                )
                self._order[entity_type].sort()
        self._published.put((entity_type, entity_id, expected + 1, expected + len(events)))
        return positions

    def position(self, entity_type: str, entity_id: str) -> int:
        """The entity's last event number (0 when it has none), as RedisStorage's."""
        with self._lock:
            return len(self._streams.get((entity_type, entity_id), ()))

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        check_entity_type(entity_type)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._lock:
            order = [item for item in self._order.get(entity_type, []) if after is None
                     or item[0] > after]
        page = order[:limit]
        token = page[-1][0] if len(order) > limit else None
        return [entity_id for _, entity_id in page], token

    # -- retention: as RedisStorage's ------------------------------------------------------

    def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        """Marks the entity's events before `event_number` as removable (the scavenger removes
        them); returns the first kept event number."""
        with self._lock:
            head = len(self._streams.get((entity_type, entity_id), ()))
            if event_number > head + 1:
                raise truncated_beyond_head(entity_type, entity_id, event_number, head)
            old = self._kept.get((entity_type, entity_id), 1)
            kept = max(event_number, old)
            if kept > old:  # a truncation past a delete is a truncation (as on Redis)
                self._deleted.discard((entity_type, entity_id))
            if kept > 1:
                self._kept[entity_type, entity_id] = kept
            return kept

    def tombstone(self, entity_type: str, entity_id: str) -> int:
        """Deletes the entity for good: reads and later writes raise StreamDeletedError.
        Returns its head (-1: tombstoned already)."""
        return self._remove(entity_type, entity_id, tombstone=True)

    def delete(self, entity_type: str, entity_id: str) -> int:
        """The entity reads as empty until written again, after its old numbers. Returns
        its head (-1: nothing to delete)."""
        return self._remove(entity_type, entity_id, tombstone=False)

    def _remove(self, entity_type: str, entity_id: str, *, tombstone: bool) -> int:
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        key = (entity_type, entity_id)
        with self._lock:
            head = len(self._streams.get(key, ()))
            if key in self._tombstoned or (not tombstone and head == 0):
                return -1
            if tombstone:
                self._tombstoned.add(key)
                self._deleted.discard(key)
            else:
                self._deleted.add(key)
            self._kept[key] = head + 1
            self._snapshots.pop(key, None)
            first_id = self._first_ids.get(key)
            if first_id is not None and (first_id, entity_id) in self._order[entity_type]:
                self._order[entity_type].remove((first_id, entity_id))
            return head

    def retain(self, entity_type: str, retention: Retention) -> None:
        """Sets the entity type's limits, applied when the scavenger runs."""
        self._retention[entity_type] = retention

    def scavenge(self, subscribers: Mapping[str, Sequence[str]]) -> Scavenged:
        """As RedisStorage's: the retention limits become truncations, and the events
        before each truncation are removed. The in-memory bus is handed events as they are
        published and keeps no checkpoints: `subscribers` holds nothing back here."""
        done = Scavenged()
        now = datetime.now(UTC)
        with self._lock:
            for key, records in self._streams.items():
                kept = self._kept.get(key, 1)
                limits = self._retention.get(key[0])
                if limits is not None and records:
                    limited = max(kept, first_kept_by_count(limits, len(records)),
                                  _kept_by_age(limits, records, now))
                    if limited > kept:  # as truncate_before
                        self._deleted.discard(key)
                    self._kept[key] = kept = limited
                removed = [r for r in records[: kept - 1] if r is not None]
                records[: kept - 1] = [None] * (kept - 1)
                if removed:
                    done += Scavenged(1, len(removed), sum(len(r.name) + len(r.data)
                                                           for r in removed))
        return done

    # -- snapshots: as RedisStorage's ------------------------------------------------------

    def save_snapshot(self, entity_type: str, entity_id: str, snapshot: StoredSnapshot) -> None:
        """Stores the entity's state after the snapshot's event number (`Store.save_snapshot`)."""
        number = snapshot.event_number
        with self._lock:
            records = self._streams.get((entity_type, entity_id), [])
            if (entity_type, entity_id) in self._tombstoned:
                raise StreamDeletedError(entity_type, entity_id)
            if number > len(records):
                raise beyond_head(entity_type, entity_id, number, len(records))
            if number + 1 < self._kept.get((entity_type, entity_id), 1):
                raise not_stored(entity_type, entity_id, number)
            kept = self._snapshots.setdefault((entity_type, entity_id), {})
            old = kept.get(snapshot.name)
            record = records[number - 1]
            if record is None:
                raise not_stored(entity_type, entity_id, number)
            if old is None or old[0].version != snapshot.version or old[0].event_number < number:
                kept[snapshot.name] = snapshot, record.event_time

    def load_snapshot(self, entity_type: str, entity_id: str,
                      name: str) -> tuple[StoredSnapshot, datetime] | None:
        """The newest snapshot stored under `name`, with its event's time, or None."""
        with self._lock:
            found = self._snapshots.get((entity_type, entity_id), {}).get(name)
            kept = self._kept.get((entity_type, entity_id), 1)
            return None if found is None or found[0].event_number + 1 < kept else found

    # -- the log: as RedisStorage's --------------------------------------------------------

    def read_log(self, partition: int, after: int = 0,
                 entity_types: Collection[str] | None = None) -> Iterator[Event]:
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        with self._lock:
            trimmed = self._trimmed[partition]
            if after < trimmed and self._logs[partition]:
                raise TruncatedError(f"the log of partition {partition}",
                                     Position(partition, trimmed + 1))
            pointers = self._logs[partition][max(0, after - trimmed):]
        for entity_type, entity_id, number in pointers:
            if entity_types is None or entity_type in entity_types:
                yield from self._read(entity_type, entity_id, number - 1, last=number)

    def log_entry(self, position: Position) -> tuple[str, str, int] | None:
        with self._lock:
            index = position.number - 1 - self._trimmed[position.partition]
            log = self._logs[position.partition]
            return log[index] if 0 <= index < len(log) else None

    def wait_log(self, after: Mapping[int, int], timeout: float) -> None:
        def moved() -> bool:
            return any(len(log) + self._trimmed[p] > after.get(p, 0)
                       for p, log in enumerate(self._logs))

        with self._logged:
            self._logged.wait_for(moved, timeout)

    def followed(self, name: str) -> dict[int, int]:
        with self._lock:
            return dict(self._followers.get(name, {}))

    def record_followed(self, name: str, done: Mapping[int, int]) -> None:
        with self._lock:
            self._followers.setdefault(name, {}).update(done)

    def trim_logs(self, keep: int | None = None, keep_for_ms: int | None = None) -> int:
        """As RedisStorage's: at least the last `keep` events or those of the last
        `keep_for_ms` milliseconds, and what a follower has not done."""
        check_log_keep(keep, keep_for_ms)
        cutoff = None if keep_for_ms is None else (
            datetime.now(UTC) - timedelta(milliseconds=keep_for_ms))
        removed = 0
        with self._lock:
            for partition, log in enumerate(self._logs):
                if not log:
                    continue
                trimmed = self._trimmed[partition]
                done = [d[partition] for d in self._followers.values() if partition in d]
                young = None if cutoff is None else trimmed + 1 + next(
                    (i for i, entry in enumerate(log) if self._young(entry, cutoff)), len(log))
                first = trim_from(trimmed + len(log), keep or 1, done, young)
                drop = max(0, first - 1 - trimmed)
                del log[:drop]
                self._trimmed[partition] += drop
                removed += drop
        return removed

    def _young(self, entry: tuple[str, str, int], cutoff: datetime) -> bool:
        """Whether the logged event is not older than `cutoff` (a removed one is old)."""
        entity_type, entity_id, number = entry
        record = self._streams[entity_type, entity_id][number - 1]
        return record is not None and record.event_time >= cutoff

    def start_publish(self, bus: Bus, reader: Reader, stop: threading.Event, *,
                      logger: logging.Logger | None = None) -> None:
        if not isinstance(bus, EventBus):
            raise ConfigurationError(
                f"InMemoryStorage publishes to a bus that takes events, not {type(bus).__name__}"
            )
        while not stop.is_set():
            try:
                entity_type, entity_id, first, last = self._published.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                events = reader.read_range(entity_type, entity_id, first, last)
                bus.write(entity_type, events)
            except Exception:
                # Reported, and the other entities go on (an unreadable event or a failing
                # bus must not stall them).
                (logger or log).exception("publishing %s %r events %d..%d failed",
                                          entity_type, entity_id, first, last)

    def close(self) -> None:
        pass


def _kept_by_age(limits: Retention, records: list[_Record | None], now: datetime) -> int:
    """The first event younger than `max_age` (the newest is always kept)."""
    if limits.max_age is None:
        return 1
    cutoff = now - limits.max_age
    return next((number for number, record in enumerate(records, start=1)
                 if record is not None and record.event_time >= cutoff), len(records))
