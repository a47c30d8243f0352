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
shares partitions.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from .archiver import Archived, take_lease
from .keys import text
from .layouts import RECORDED_ARCHIVED, RECORDED_LOG_ARCHIVED
from .recorders import ApplicationKeys, applications_key
from .scripts import Script

RecordedRow = tuple[str, str, str, bool, int, str, bytes, int | None]
PURPOSE = "events"  # the applications' aggregate events; snapshots stay in Redis
LOG_PAGE = 1000
HEADS_PAGE = 500


class RecordedArchiveWriter(Protocol):
    """What the archiver needs of an archive (`es_workers.postgres.PostgresRecordedArchive`)."""

    server: str
    table: str

    def init(self) -> int: ...

    def insert(self, rows: Sequence[RecordedRow]) -> int: ...


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
        return sorted(text(name) for name in self.client.smembers(applications_key(
            self.prefix)))

    def run_once(self) -> Archived:
        """One pass over the applications whose lease this archiver holds (or takes)."""
        done = Archived()
        for application in self.applications():
            keys = ApplicationKeys(self.prefix, application)
            if self._lease(keys):
                done += self._archive(keys)
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
        after = int(self.client.get(scanned) or 0)
        while True:
            page = self.client.xrange(keys.notifications(), f"{after + 1}-0", "+",
                                      count=LOG_PAGE)
            if not page:
                return
            newest = {text(fields[b"o"]): f"{int(fields[b'v'])} {text(fields[b'u'])}"
                      for _, fields in page}
            after = int(text(page[-1][0]).partition("-")[0])
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(heads, mapping=newest)
            pipe.set(scanned, after)
            pipe.execute()
            if len(page) < LOG_PAGE:
                return

    def _archive(self, keys: ApplicationKeys) -> Archived:
        self._read_log(keys)
        done = Archived()
        rows: list[RecordedRow] = []
        marks: dict[str, int] = {}
        page: list[tuple[str, int, bool]] = []
        for field, value in self.client.hscan_iter(keys.archiver("heads"), count=HEADS_PAGE):
            version, _, flag = text(value).partition(" ")
            page.append((text(field), int(version), flag == "1"))
            if len(page) == HEADS_PAGE:
                done += self._page(keys, page, rows, marks)
                page = []
        done += self._page(keys, page, rows, marks)
        done += self._flush(keys, rows, marks)
        return done + self._archive_log(keys)

    def _page(self, keys: ApplicationKeys, page: list[tuple[str, int, bool]],
              rows: list[RecordedRow], marks: dict[str, int]) -> Archived:
        """Reads the page's aggregates' events past the hot window into `rows`, flushing
        each `batch` events."""
        if not page:
            return Archived()
        done = Archived()
        found = self.client.hmget(keys.archived(PURPOSE), [entry[0] for entry in page])
        for (originator, head, is_uuid), mark in zip(page, found, strict=True):
            upto, last = head - self.keep, -1 if mark is None else int(mark)
            stream = keys.aggregate(PURPOSE, originator)
            while upto > last:
                entries = self.client.xrange(stream, f"{last + 1}-0", f"{upto}-1",
                                             count=self.batch - len(rows))
                if not entries:
                    break
                for entry_id, fields in entries:
                    number = fields.get(b"n")
                    rows.append((keys.application, PURPOSE, originator, is_uuid,
                                 int(text(entry_id).partition("-")[0]), text(fields[b"t"]),
                                 bytes(fields[b"s"]),
                                 int(number) if number is not None else None))
                last = marks[originator] = rows[-1][4]
                if len(rows) >= self.batch:
                    done += self._flush(keys, rows, marks)
        return done

    def _flush(self, keys: ApplicationKeys, rows: list[RecordedRow],
               marks: dict[str, int]) -> Archived:
        """Stores the rows in the archive, then (once committed) moves the marks and removes
        what they cover from Redis."""
        if not rows:
            return Archived()
        stored = self.archive.insert(rows)
        moved = self._script(
            keys=RECORDED_ARCHIVED.keys.pack([(keys.aggregate(PURPOSE, originator),)
                                              for originator in marks],
                                             marks=keys.archived(PURPOSE)),
            args=RECORDED_ARCHIVED.args.pack(list(marks.items())))
        rows.clear()
        marks.clear()
        return Archived(stored, int(moved))

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
            page = self.client.xrange(log, f"{mark + 1}-0", f"{target}-0", count=self.batch)
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
            stored += self.archive.insert(rows)
            mark = int(text(page[-1][0]).partition("-")[0])
            self._log_script(keys=RECORDED_LOG_ARCHIVED.keys.pack(log=log, mark=mark_key),
                             args=RECORDED_LOG_ARCHIVED.args.pack(upto=mark))
        return Archived(stored, 0)
