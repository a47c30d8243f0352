"""The archiver on Redis: copies each entity's events older than its hot window to the archive
(PostgreSQL), then marks them archived so the scavenger may remove them from Redis.

Order of a batch: read the entries (XRANGE), insert them into the archive in one transaction
(idempotent by entity type, entity ID and event number), and only once it committed move
each entity's mark (archived.lua, never back). An archiver killed in between loses nothing
(the marks did not move: the events stay in Redis and are copied again) and duplicates
nothing (the second insert finds them there). Several archivers share the partitions by
leases (`SET NX PX`, renewed while they work); a lease only saves duplicate work, it is not
what makes archiving correct.

Gentle by construction, since it shares Redis (one thread) and the cores with the app: no
call holds Redis long (at most ENTRIES_PER_CALL entries per XRANGE, MARKS_PER_CALL entities
per archived.lua call), and while it keeps up it spreads a pass out, resting after each
partition's work as long as that took (`pace`), so that the app's commands and processes
never queue behind a burst of it; when behind (a batch or more per pass) it goes at full
speed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis

from .. import metrics
from ..errors import StorageUnavailableError
from ..retention import HotWindow
from .entries import flat_entries, xrange
from .keys import RedisKeys, text
from .layouts import ARCHIVED
from .scripts import Script

log = logging.getLogger("es_workers.archiver")

ArchivedRow = tuple[str, str, int, int, int | None, str, bytes, int, str, bytes | None]
Entry = tuple[bytes, list[bytes]]
ENTRIES_PER_CALL = 500  # entries per XRANGE: a reply Redis builds in a fraction of a ms
MARKS_PER_CALL = 200  # entities per archived.lua call (an HGET and an HSET each)


class Archive(Protocol):
    """What Redis storage needs of an archive (`es_workers.postgres.PostgresArchive`)."""

    prefix: str
    server: str
    table: str

    def init(self) -> int: ...

    def insert(self, rows: Sequence[ArchivedRow]) -> int: ...

    def entries(self, entity_type: str, entity_id: str, first: int, last: int) -> list[
        Entry]: ...

    def counts(self) -> dict[str, tuple[int, int]]: ...

    def delete_entity(self, entity_type: str, entity_id: str) -> int: ...

    def close(self) -> None: ...


class AsyncArchive(Protocol):
    """What `AsyncRedisStorage` needs of an archive (`postgres.AsyncPostgresArchive`)."""

    prefix: str
    server: str

    async def entries(self, entity_type: str, entity_id: str, first: int, last: int) -> list[
        Entry]: ...


class ArchiveBound:
    """The archive's `KeepBound` (registered on `RedisStorage.keep_bounds` when the storage
    has an archive): the scavenger removes an entity's events only up to its archived mark
    (the first needed is the mark + 1), never one the archive has not confirmed. A
    tombstoned entity needs none (deleted for good: the archiver deletes its rows); a
    deleted one (store.delete) is bound by its mark like any other."""

    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self.client, self.keys = client, keys

    def first_needed(self, entity_type: str, entity_ids: Sequence[str]) -> list[int]:
        """For each entity, its archived mark + 1 (past its head when tombstoned)."""
        pipe = self.client.pipeline(transaction=False)
        for entity_id in entity_ids:
            partition = self.keys.partition(entity_type, entity_id)
            pipe.hget(self.keys.archived(entity_type, partition), entity_id)
            pipe.hget(self.keys.truncated(entity_type, partition), entity_id)
        replies = pipe.execute()
        needed = []
        for mark, truncation in zip(replies[::2], replies[1::2], strict=True):
            if truncation is not None and text(truncation).endswith(" tombstone"):
                # its truncation is its head + 1: nothing of it is needed
                needed.append(int(text(truncation).split(" ", 1)[0]))
            else:
                needed.append(archived_mark(mark)[0] + 1)
        return needed


@dataclass(frozen=True)
class Archived:
    """What an archiver pass did: events newly stored in the archive, and of how many
    entities marks moved."""

    events: int = 0
    entities: int = 0

    def __add__(self, other: Archived) -> Archived:
        return Archived(self.events + other.events, self.entities + other.entities)


@dataclass(frozen=True)
class ArchiveLag:
    """Events past the hot window not yet archived, and when the oldest of them was written
    (µs since 1970; None: there is none)."""

    events: int = 0
    oldest_us: int | None = None

    def __add__(self, other: ArchiveLag) -> ArchiveLag:
        times = [t for t in (self.oldest_us, other.oldest_us) if t is not None]
        return ArchiveLag(self.events + other.events, min(times) if times else None)

    def age_s(self, now_us: int) -> float | None:
        """Seconds since the oldest event was written (None: nothing lags)."""
        return None if self.oldest_us is None else max(0.0, (now_us - self.oldest_us) / 1e6)


def archive_lag(client: Any, keys: RedisKeys, entity_type: str, window: HotWindow,
                heads: Mapping[str, int], marks: Mapping[str, int]) -> ArchiveLag:
    """The entity type's events past the window's count not yet archived, and the time of
    the oldest of them: one XRANGE ... COUNT 1 per lagging entity (pipelined)."""
    lagging = [(entity_id, marks.get(entity_id, 0), window.archive_up_to(head))
               for entity_id, head in heads.items()]
    lagging = [(entity_id, mark, last) for entity_id, mark, last in lagging if last > mark]
    lag = ArchiveLag(sum(last - mark for _, mark, last in lagging))
    for start in range(0, len(lagging), 500):
        pipe = client.pipeline(transaction=False)
        for entity_id, mark, last in lagging[start:start + 500]:
            pipe.xrange(keys.stream(entity_type, entity_id), f"{mark + 1}-0", f"{last}-0",
                        count=1)
        for entries in pipe.execute():
            for entry in flat_entries(entries):
                micros = _micros(entry)
                if micros is not None:
                    lag += ArchiveLag(0, micros)
    return lag


def take_lease(client: Any, key: str, owner: str, lease_ms: int) -> bool:
    """Takes the lease at `key` for `owner` (SET NX PX), or renews it if `owner` holds it;
    False while another archiver holds it. (A renewal that races the lease's expiry can only
    let two archivers do the same work: their copies are idempotent, marks never go back.)"""
    if client.set(key, owner, nx=True, px=lease_ms):
        return True
    if text(client.get(key) or b"") == owner:
        client.pexpire(key, lease_ms)
        return True
    return False


def archived_mark(value: bytes | str | None) -> tuple[int, str]:
    """An entity's mark as archived.lua writes it: (archived up to, event 1's ID)."""
    if value is None:
        return 0, ""
    number, _, first_id = text(value).partition(" ")
    return (int(number) if number.isdigit() else 0), first_id


class OtherArchiver(Protocol):
    """An archiver that runs its passes with a `RedisArchiver`'s (the eventsourcing
    applications' `RecorderArchiver`, in `es-workers archive`)."""

    def run_once(self) -> Archived: ...

    def release(self) -> None: ...


@dataclass
class _Pending:
    """Rows read, not yet in the archive, and the marks they will move."""

    rows: list[ArchivedRow]
    marks: dict[str, tuple[int, str]]
    lag: ArchiveLag = ArchiveLag()  # what the pass found to archive


class RedisArchiver:
    """Archives the entity types' events older than their hot window (`windows` per type,
    over `default`), `batch` events per archive transaction; each pass also runs a pass of
    each archiver in `also`. While it keeps up (its previous pass archived less than a
    batch, and so far this one too) it rests after each partition's work (and each of
    `also`) `pace` times as long as that work took (0: never)."""

    def __init__(self, client: Any, keys: RedisKeys, archive: Archive, *,
                 entity_types: Sequence[str], windows: Mapping[str, HotWindow],
                 default: HotWindow, batch: int = 5000, lease_ms: int = 15_000,
                 also: Sequence[OtherArchiver] = (), pace: float = 1.0) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if pace < 0:
            raise ValueError(f"pace must be >= 0, got {pace}")
        self.client, self.keys, self.archive = client, keys, archive
        self.entity_types = list(entity_types)
        self.windows = {t: windows.get(t, HotWindow()).over(default) for t in entity_types}
        self.batch, self.lease_ms, self.pace = batch, lease_ms, pace
        self._keeping_up = False  # a first pass catches up at full speed
        self.owner = uuid.uuid4().hex
        self.also = list(also)
        self._script = Script(client, "archived")
        # Per entity type, what the latest pass found past the window (its partitions).
        self.lag: dict[str, ArchiveLag] = {}

    def run(self, stop: threading.Event, *, idle_s: float = 1.0,
            max_backoff_s: float = 30.0,
            after_pass: Callable[[Archived], object] | None = None) -> None:
        """Archives until `stop` (blocks): a pass over every partition it can lease, then
        waits `idle_s` unless the pass archived a whole batch or more (a backlog). When
        Redis or the archive cannot be reached it logs why and tries again, waiting longer
        each time (up to `max_backoff_s`): a failed batch moved no mark, so nothing is
        lost. `after_pass` is called after its first pass and each one that archived events
        (`es-workers archive` scavenges there: what it archived leaves Redis without the
        publisher pausing its relay to remove it, and what an archiver that stopped before
        its scavenge left behind goes at the next one's start)."""
        backoff, first = idle_s, True
        while not stop.is_set():
            try:
                done = self.run_once(rest=stop.wait)
                if (done.events or first) and after_pass is not None:
                    after_pass(done)
                first = False
            except (StorageUnavailableError, redis.ConnectionError, redis.TimeoutError) as error:
                log.warning("archiving failed, trying again in %.0f s: %s", backoff, error)
                stop.wait(backoff)
                backoff = min(max_backoff_s, backoff * 2)
                continue
            backoff = idle_s
            if done.events:
                log.info("archived %d events of %d entities", done.events, done.entities)
            if done.events < self.batch:  # caught up: the next pass after a rest, not at
                stop.wait(idle_s)  # once (each pass reads every entity's head)
        self.release()

    def run_once(self, rest: Callable[[float], object] = time.sleep) -> Archived:
        """One pass over the partitions this archiver holds (or takes) the lease of; what it
        found past the window before archiving it goes to `lag` and the lag gauges. While it
        keeps up, `rest(seconds)` after each partition's work (`run` rests on its stop
        event)."""
        done = Archived()
        found = {entity_type: ArchiveLag() for entity_type in self.entity_types}
        started_us = time.time_ns() // 1000
        for partition in range(self.keys.partitions):
            if not self._lease(partition):
                continue
            began = time.monotonic()
            for entity_type in self.entity_types:
                archived, lag = self._archive(entity_type, partition)
                done, found[entity_type] = done + archived, found[entity_type] + lag
            self._rest(rest, time.monotonic() - began, done)
        for other in self.also:
            began = time.monotonic()
            done += other.run_once()
            self._rest(rest, time.monotonic() - began, done)
        self._keeping_up = done.events < self.batch
        self.lag = found
        gauges = metrics.archive_lag()
        for entity_type, lag in found.items():
            gauges.events.labels(entity_type).set(lag.events)
            gauges.seconds.labels(entity_type).set(lag.age_s(started_us) or 0.0)
        return done

    def release(self) -> None:
        """Gives up the leases this archiver holds (another may take them at once)."""
        for other in self.also:
            other.release()
        for partition in range(self.keys.partitions):
            key = self.keys.archiver(partition)
            if text(self.client.get(key) or b"") == self.owner:
                self.client.delete(key)  # a race with its expiry only costs duplicate work

    def _lease(self, partition: int) -> bool:
        return take_lease(self.client, self.keys.archiver(partition), self.owner,
                          self.lease_ms)

    def _rest(self, rest: Callable[[float], object], spent: float, done: Archived) -> None:
        """Rests `pace` times the time a step took, while the archiver keeps up: a pass is
        spread out instead of a burst the app's commands and processes queue behind."""
        if self.pace and self._keeping_up and done.events < self.batch:
            rest(spent * self.pace)

    def _archive(self, entity_type: str, partition: int) -> tuple[Archived, ArchiveLag]:
        window = self.windows[entity_type]
        if window.events is None and window.age is None:
            return Archived(), ArchiveLag()
        done, page = Archived(), []
        pending = _Pending([], {})
        heads = self.keys.heads(entity_type, partition)
        for field, value in self.client.hscan_iter(heads, count=500):
            page.append((text(field), int(value)))
            if len(page) == 500:
                done += self._page(entity_type, partition, window, page, pending)
                page = []
        done += self._page(entity_type, partition, window, page, pending)
        done += self._flush(entity_type, partition, pending)
        self._delete_tombstoned(entity_type, partition)
        return done, pending.lag

    def _delete_tombstoned(self, entity_type: str, partition: int) -> None:
        """Deletes the archived events of the partition's tombstoned entities, then their
        marks (a tombstoned entity is never archived again, so this runs once each)."""
        truncated = self.keys.truncated(entity_type, partition)
        gone = [text(field) for field, value in self.client.hscan_iter(truncated, count=500)
                if text(value).endswith(" tombstone")]
        if not gone:
            return
        archived = self.keys.archived(entity_type, partition)
        for entity_id, mark in zip(gone, self.client.hmget(archived, gone), strict=True):
            if mark is not None:
                self.archive.delete_entity(entity_type, entity_id)
                self.client.hdel(archived, entity_id)

    def _page(self, entity_type: str, partition: int, window: HotWindow,
              page: list[tuple[str, int]], pending: _Pending) -> Archived:
        """Reads the page's entities' events to archive into `pending`, flushing it each
        `batch` events."""
        if not page:
            return Archived()
        ids = [entity_id for entity_id, _ in page]
        marks = self.client.hmget(self.keys.archived(entity_type, partition), ids)
        truncations = self.client.hmget(self.keys.truncated(entity_type, partition), ids)
        cutoff = (int((datetime.now(UTC) - window.age).timestamp() * 1_000_000)
                  if window.age is not None else None)
        done = Archived()
        for (entity_id, head), mark, truncation in zip(page, marks, truncations, strict=True):
            if truncation is not None and text(truncation).endswith(" tombstone"):
                continue  # deleted for good: its archived events go (_delete_tombstoned)
            upto, first_id = archived_mark(mark)
            by_count = window.archive_up_to(head) if window.events is not None else 0
            last = head - 1 if cutoff is not None else by_count
            while last > upto:
                room = min(self.batch - len(pending.rows), ENTRIES_PER_CALL)
                entries = flat_entries(xrange(
                    self.client, self.keys.stream(entity_type, entity_id), f"{upto + 1}-0",
                    f"{last}-0", count=room))
                taken = _older(entries, by_count, cutoff)
                if not taken:
                    break
                pending.lag += ArchiveLag(len(taken), _micros(taken[0]))
                first_id = self._add(entity_type, entity_id, partition, taken, first_id,
                                     pending)
                upto = int(taken[-1][0][:-2])
                if len(pending.rows) >= self.batch:
                    done += self._flush(entity_type, partition, pending)
                if len(taken) < len(entries):
                    break  # the rest is younger than the window's age
        return done

    def _add(self, entity_type: str, entity_id: str, partition: int,
             entries: list[Any], first_id: str, pending: _Pending) -> str:
        for entry_id, values in entries:
            fields = dict(zip(values[::2], values[1::2], strict=True))
            number = int(entry_id[:-2])
            logged = fields.get(b"p")
            if number == 1:
                first_id = text(fields[b"e"])
            pending.rows.append((
                entity_type, entity_id, number, partition,
                int(logged) if logged is not None else None, text(fields[b"n"]),
                bytes(fields[b"d"]), int(fields[b"t"]), text(fields[b"e"]), fields.get(b"m")))
        pending.marks[entity_id] = (int(entries[-1][0][:-2]), first_id)
        return first_id

    def _flush(self, entity_type: str, partition: int, pending: _Pending) -> Archived:
        """Stores the pending rows in the archive, then (once committed) moves the marks."""
        if not pending.rows:
            return Archived()
        stored = self.archive.insert(pending.rows)
        metrics.ARCHIVED.labels(entity_type).inc(stored)
        marks = [(entity_id, number, first_id)
                 for entity_id, (number, first_id) in pending.marks.items()]
        moved = 0
        for start in range(0, len(marks), MARKS_PER_CALL):  # each mark moves on its own
            moved += int(self._script(
                keys=ARCHIVED.keys.pack(archived=self.keys.archived(entity_type, partition)),
                args=ARCHIVED.args.pack(marks[start:start + MARKS_PER_CALL])))
        pending.rows.clear()
        pending.marks.clear()
        return Archived(stored, moved)


def _micros(entry: Any) -> int | None:
    """An entry's event time (its `t` field, µs since 1970)."""
    values = entry[1]
    return next((int(v) for k, v in zip(values[::2], values[1::2], strict=True) if k == b"t"),
                None)


def _older(entries: list[Any], by_count: int, cutoff: int | None) -> list[Any]:
    """The leading entries that are past the hot window: numbered up to `by_count`, or
    written before `cutoff` (µs since 1970)."""
    taken = []
    for entry in entries:
        number = int(entry[0][:-2])
        if number > by_count:
            micros = _micros(entry)
            if cutoff is None or micros is None or micros >= cutoff:
                break
        taken.append(entry)
    return taken


@dataclass(frozen=True)
class ArchiveCheck:
    """`--verify` of one entity type: entities and events compared, and what differs."""

    entity_type: str
    entities: int = 0
    archived: int = 0  # events the marks say the archive holds
    found: int = 0  # of those, events the archive holds
    compared: int = 0  # events in both Redis and the archive, compared field by field
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and self.found == self.archived


def verify(client: Any, keys: RedisKeys, archive: Archive, entity_type: str,
           marks: Mapping[str, int]) -> ArchiveCheck:
    """Counts and checksums of each entity's events 1..mark, the archive's against what
    Redis still holds of them (`RedisStorage.verify_archive`)."""
    archived = found = compared = 0
    problems: list[str] = []
    for entity_id, mark in sorted(marks.items()):
        archived += mark
        first = 1
        while first <= mark:  # a page of events at a time
            last = min(mark, first + 999)
            in_archive = archive.entries(entity_type, entity_id, first, last)
            hot = flat_entries(xrange(client, keys.stream(entity_type, entity_id),
                                      f"{first}-0", f"{last}-0"))
            found += len(in_archive)
            if len(in_archive) != last - first + 1:
                problems.append(f"{entity_type} {entity_id!r}: the archive holds "
                                f"{len(in_archive)} of events {first}..{last}")
            both = {bytes(entry_id) for entry_id, _ in hot}
            mine = [entry for entry in in_archive if entry[0] in both]
            if len(mine) != len(hot) or _checksum(mine) != _checksum(hot):
                problems.append(f"{entity_type} {entity_id!r}: events {first}..{last} differ "
                                "between Redis and the archive")
            compared += len(hot)
            first = last + 1
    return ArchiveCheck(entity_type, len(marks), archived, found, compared, tuple(problems))


def _checksum(entries: Sequence[tuple[Any, Sequence[Any]]]) -> str:
    digest = hashlib.sha256()
    for entry_id, fields in entries:
        for value in (entry_id, *fields):
            raw = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else (
                str(value).encode())
            digest.update(b"%d:" % len(raw) + raw)
    return digest.hexdigest()
