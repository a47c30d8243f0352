"""The archiver of the `eventsourcing` applications' stored events (es_workers.eventsourcing):
moves each aggregate's events older than its hot window to the archive (PostgreSQL), marks
them archived and removes them from Redis, per application under the prefix; then the same
for the application's log (its entries older than its newest `keep`: the events they name
that are still hot are copied, the others are in the archive already).

Which applications: the set `<prefix>:es:applications` (the factory adds its application's
name when it makes a recorder). Which aggregates: those the application's log names (the
archiver reads each log once, keeping the newest version it saw of each aggregate). The hot
window is by count: an aggregate's events more than `keep` versions below its newest go
(`ES_ARCHIVE_AFTER`; at least its newest stays, which record.lua reads to refuse a version
at or below it).

Order of a batch: read the events (XRANGE), insert them into the archive in one transaction
(idempotent by application, purpose, originator ID and version), and only once it committed
move the aggregates' marks and remove what they cover from Redis, in one script
(recorded_archived.lua). An archiver killed in between loses nothing (the marks did not
move, the events are still in Redis and are copied again) and duplicates nothing (the second
insert finds them). Several archivers share the applications by leases, as `RedisArchiver`
shares partitions, and no call holds Redis long, as there (ENTRIES_PER_CALL entries per
XRANGE or pipeline, AGGREGATES_PER_CALL aggregates per recorded_archived.lua call).

What is archived and what lags (`recorded_lag`, for `es-workers status` and the dashboard;
`es_archive_lag_events` and `es_archived_total` for the archiver's passes) are labelled
`eventsourcing:<application>` (`archive_label`) beside the entity types (which hold no `:`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import metrics
from ..retention import HotWindow
from .archiver import ENTRIES_PER_CALL, Archived, take_lease
from .keys import text
from .layouts import RECORDED_ARCHIVED, RECORDED_LOG_ARCHIVED
from .recorder_keys import ApplicationKeys, applications_key
from .scripts import Script

RecordedRow = tuple[str, str, str, bool, int, str, bytes, int | None]
PURPOSE = "events"  # the applications' aggregate events; snapshots stay in Redis
LOG_PAGE = 1000
HEADS_PAGE = 500
AGGREGATES_PER_CALL = 100  # per recorded_archived.lua call: a mark and an XTRIM each


class RecordedArchiveWriter(Protocol):
    """What the archiver needs of an archive (`es_workers.postgres.PostgresRecordedArchive`)."""

    server: str
    table: str

    def init(self) -> int: ...

    def insert(self, rows: Sequence[RecordedRow]) -> int: ...


def archive_label(application: str) -> str:
    """How status rows and the archive's metrics name an application (beside entity types)."""
    return f"eventsourcing:{application}"


def registered_applications(client: Any, prefix: str) -> list[str]:
    """The eventsourcing applications registered under the prefix, sorted."""
    return sorted(text(name) for name in client.smembers(applications_key(prefix)))


@dataclass(frozen=True)
class RecordedLag:
    """One application's aggregate events in Redis as the archiver counts them, by versions
    (eventsourcing numbers an aggregate's events 1, 2, ...): recorded (the aggregates'
    newest versions, summed), archived (their marks, summed) and past the hot window (more
    than `keep` versions below the newest) not archived yet."""

    application: str
    events: int = 0
    archived_marked: int = 0
    lag: int = 0

    def __add__(self, other: RecordedLag) -> RecordedLag:
        return RecordedLag(self.application, self.events + other.events,
                           self.archived_marked + other.archived_marked,
                           self.lag + other.lag)


def recorded_lag(client: Any, prefix: str, application: str,
                 keep: int | None) -> RecordedLag:
    """The application's `RecordedLag` with a hot window of `keep` (at least 1, as the
    archiver keeps; None: no window by count, nothing lags), read without writing: the
    archiver's heads, overlaid with the log's entries it has not read yet (all of them
    before its first pass), a page at a time, and the marks of each page of aggregates."""
    keys = ApplicationKeys(prefix, application)
    window = HotWindow(events=None if keep is None else max(1, keep))
    newer: dict[str, int] = {}
    for page, _ in log_pages(client, keys, int(client.get(keys.archiver("scanned")) or 0)):
        newer.update((originator, _version(head)) for originator, head in page.items())
    found, seen, heads = RecordedLag(application), set[str](), []
    for field_name, value in client.hscan_iter(keys.archiver("heads"), count=HEADS_PAGE):
        originator = text(field_name)
        if originator not in seen:  # HSCAN may return a field twice
            seen.add(originator)
            heads.append((originator, newer.pop(originator, _version(text(value)))))
        if len(heads) == HEADS_PAGE:
            found, heads = found + _counted(client, keys, heads, window), []
    rest = heads + list(newer.items())  # and the aggregates the archiver has not seen yet
    for start in range(0, len(rest), HEADS_PAGE):
        found += _counted(client, keys, rest[start:start + HEADS_PAGE], window)
    return found


def _counted(client: Any, keys: ApplicationKeys, heads: list[tuple[str, int]],
             window: HotWindow) -> RecordedLag:
    """The aggregates (originator ID, newest version) counted, with their marks."""
    marks = [0 if mark is None else int(mark) for mark in client.hmget(
        keys.archived(PURPOSE), [originator for originator, _ in heads])]
    return RecordedLag(keys.application, sum(head for _, head in heads), sum(marks),
                       sum(max(0, window.archive_up_to(head) - mark)
                           for (_, head), mark in zip(heads, marks, strict=True)))


def log_pages(client: Any, keys: ApplicationKeys,
              after: int) -> Iterator[tuple[dict[str, str], int]]:
    """The log's entries after the notification ID `after`, a page at a time: originator ID
    -> `<newest version> <1 if a UUID>` in the page, and the notification ID read up to."""
    while True:
        page = client.xrange(keys.notifications(), f"{after + 1}-0", "+", count=LOG_PAGE)
        if not page:
            return
        after = int(text(page[-1][0]).partition("-")[0])
        yield {text(fields[b"o"]): f"{int(fields[b'v'])} {text(fields[b'u'])}"
               for _, fields in page}, after
        if len(page) < LOG_PAGE:
            return


def _version(head: str) -> int:
    return int(head.partition(" ")[0])


@dataclass
class _Batch:
    """Rows read, not yet in the archive, the marks they will move, and the events past the
    hot window the pass found (read, whether archived yet or not)."""

    rows: list[RecordedRow] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)
    found: int = 0


class RecorderArchiver:
    """Archives the events of the eventsourcing applications under `prefix` (those named in
    `applications`, else every one registered there), keeping the newest `keep` (at least
    1) of each aggregate in Redis, `batch` events per archive transaction."""

    def __init__(self, client: Any, prefix: str, archive: RecordedArchiveWriter, *,
                 keep: int, batch: int = 5000, lease_ms: int = 15_000,
                 applications: Sequence[str] | None = None) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.client, self.prefix, self.archive = client, prefix, archive
        self.keep, self.batch, self.lease_ms = max(1, keep), batch, lease_ms
        self.named = list(applications) if applications is not None else None
        self.owner = uuid.uuid4().hex
        self._script = Script(client, "recorded_archived")
        self._log_script = Script(client, "recorded_log_archived")

    def applications(self) -> list[str]:
        """The applications this archiver archives."""
        if self.named is not None:
            return self.named
        return registered_applications(self.client, self.prefix)

    def run_once(self) -> Archived:
        """One pass over the applications whose lease this archiver holds (or takes); what
        it found past the window before archiving it goes to the lag gauge (0 for those
        another archiver holds, as `RedisArchiver` reports partitions)."""
        done = Archived()
        gauges = metrics.archive_lag()
        for application in self.applications():
            keys, found = ApplicationKeys(self.prefix, application), 0
            if self._lease(keys):
                archived, found = self._archive(keys)
                done += archived
            # No `es_archive_lag_seconds`: Redis keeps no time of a stored event.
            gauges.events.labels(archive_label(application)).set(found)
        return done

    def release(self) -> None:
        """Gives up the leases this archiver holds."""
        for application in self.applications():
            key = ApplicationKeys(self.prefix, application).archiver("lease")
            if text(self.client.get(key) or b"") == self.owner:
                self.client.delete(key)

    def _lease(self, keys: ApplicationKeys) -> bool:
        return take_lease(self.client, keys.archiver("lease"), self.owner, self.lease_ms)

    def _read_log(self, keys: ApplicationKeys) -> None:
        """Reads the log's entries not read yet into the heads (originator ID -> `<newest
        version> <1 if a UUID>`): a page at a time, the heads before the place read up to
        (read again after a crash, they set the same values)."""
        heads, scanned = keys.archiver("heads"), keys.archiver("scanned")
        for newest, after in log_pages(self.client, keys, int(self.client.get(scanned) or 0)):
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(heads, mapping=newest)
            pipe.set(scanned, after)
            pipe.execute()

    def _archive(self, keys: ApplicationKeys) -> tuple[Archived, int]:
        """Archives the application; returns what it did and the events it found past the
        hot window."""
        self._read_log(keys)
        done, batch = Archived(), _Batch()
        page: list[tuple[str, int, bool]] = []
        for originator, value in self.client.hscan_iter(keys.archiver("heads"),
                                                        count=HEADS_PAGE):
            version, _, flag = text(value).partition(" ")
            page.append((text(originator), int(version), flag == "1"))
            if len(page) == HEADS_PAGE:
                done += self._page(keys, page, batch)
                page = []
        done += self._page(keys, page, batch)
        done += self._flush(keys, batch)
        return done + self._archive_log(keys), batch.found

    def _page(self, keys: ApplicationKeys, page: list[tuple[str, int, bool]],
              batch: _Batch) -> Archived:
        """Reads the page's aggregates' events past the hot window into the batch, flushing
        it each `batch` events."""
        if not page:
            return Archived()
        done = Archived()
        found = self.client.hmget(keys.archived(PURPOSE), [entry[0] for entry in page])
        for (originator, head, is_uuid), mark in zip(page, found, strict=True):
            upto, last = head - self.keep, -1 if mark is None else int(mark)
            stream = keys.aggregate(PURPOSE, originator)
            while upto > last:
                entries = self.client.xrange(stream, f"{last + 1}-0", f"{upto}-1",
                                             count=min(self.batch - len(batch.rows),
                                                       ENTRIES_PER_CALL))
                if not entries:
                    break
                for entry_id, fields in entries:
                    number = fields.get(b"n")
                    batch.rows.append((keys.application, PURPOSE, originator, is_uuid,
                                       int(text(entry_id).partition("-")[0]),
                                       text(fields[b"t"]), bytes(fields[b"s"]),
                                       int(number) if number is not None else None))
                batch.found += len(entries)
                last = batch.marks[originator] = batch.rows[-1][4]
                if len(batch.rows) >= self.batch:
                    done += self._flush(keys, batch)
        return done

    def _flush(self, keys: ApplicationKeys, batch: _Batch) -> Archived:
        """Stores the batch's rows in the archive, then (once committed) moves the marks
        and removes what they cover from Redis."""
        if not batch.rows:
            return Archived()
        stored = self._insert(keys, batch.rows)
        moving, moved = list(batch.marks.items()), 0
        for start in range(0, len(moving), AGGREGATES_PER_CALL):  # each moves on its own
            chunk = moving[start:start + AGGREGATES_PER_CALL]
            moved += int(self._script(
                keys=RECORDED_ARCHIVED.keys.pack([(keys.aggregate(PURPOSE, originator),)
                                                  for originator, _ in chunk],
                                                 marks=keys.archived(PURPOSE)),
                args=RECORDED_ARCHIVED.args.pack(chunk)))
        batch.rows.clear()
        batch.marks.clear()
        return Archived(stored, moved)

    def _insert(self, keys: ApplicationKeys, rows: list[RecordedRow]) -> int:
        """Stores the rows in the archive (counted in `es_archived_total`)."""
        stored = self.archive.insert(rows)
        metrics.ARCHIVED.labels(archive_label(keys.application)).inc(stored)
        return stored

    def _archive_log(self, keys: ApplicationKeys) -> Archived:
        """Copies the events of the log's entries older than its newest `keep` (read into
        the heads already) to the archive, those still in Redis (an aggregate's hot events:
        copied, not removed; the others were archived before they left), then moves the
        log's mark and trims the log up to it (recorded_log_archived.lua)."""
        log, mark_key = keys.notifications(), keys.archiver("log")
        newest = self.client.xrevrange(log, "+", "-", count=1)
        if not newest:
            return Archived()
        target = min(int(text(newest[0][0]).partition("-")[0]) - self.keep,
                     int(self.client.get(keys.archiver("scanned")) or 0))
        mark, stored = int(self.client.get(mark_key) or 0), 0
        while target > mark:
            page = self.client.xrange(log, f"{mark + 1}-0", f"{target}-0",
                                      count=min(self.batch, ENTRIES_PER_CALL))
            if not page:
                break
            pipe = self.client.pipeline(transaction=False)
            for _, fields in page:
                version = text(fields[b"v"])
                pipe.xrange(keys.aggregate(PURPOSE, text(fields[b"o"])), f"{version}-1",
                            f"{version}-1")
            rows: list[RecordedRow] = [
                (keys.application, PURPOSE, text(fields[b"o"]), fields[b"u"] == b"1",
                 int(fields[b"v"]), text(fields[b"t"]), bytes(event[0][1][b"s"]),
                 int(text(entry_id).partition("-")[0]))
                for (entry_id, fields), event in zip(page, pipe.execute(), strict=True)
                if event]  # gone from Redis: archived (committed) before it went
            stored += self._insert(keys, rows)
            mark = int(text(page[-1][0]).partition("-")[0])
            self._log_script(keys=RECORDED_LOG_ARCHIVED.keys.pack(log=log, mark=mark_key),
                             args=RECORDED_LOG_ARCHIVED.args.pack(upto=mark))
        return Archived(stored, 0)
