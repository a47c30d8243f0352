"""The partition logs as append.lua writes them: one stream per partition, `{tag}:log`,
with one entry per write in commit order. The write's events take consecutive log numbers
(from 1, no gaps); the entry's ID is the last of them (`<n>-0`) and its fields point to the
entity stream's entries holding the events (type, id, n the first event number, c the
count). Each entity entry holds its log number (`p`). A pointer per write costs a tiny
fraction of a copy (README, "Log and positions").

No I/O here, as in `entries.py`: `LogPages` says which XRANGEs to send and turns their
replies into Events, for `RedisStorage` and `AsyncRedisStorage` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..codec import ContentRegistry
from ..errors import CorruptEventError, TruncatedError
from ..event import Event
from ..position import Position
from .archiver import archived_mark
from .entries import EntityPages, flat_entries, truncation, xrange
from .keys import RedisKeys, text

LOG_PAGE = 500
_ZERO = (b"-0", "-0")
_KNOWN_ENTITIES = 4096


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive events of one entity in the log: one XRANGE reads them."""

    entity_type: str
    entity_id: str
    first: int  # event numbers
    last: int


def log_number(entry_id: bytes | str) -> int:
    number, _, sequence = text(entry_id).partition("-")
    if not number.isdigit() or sequence != "0":
        raise ValueError(f"log entry ID {text(entry_id)!r} is not '<log number>-0'")
    return int(number)


class LogPages:
    """Reading one partition's log after a log number, page by page.

    The caller loops while `more`: it sends `XRANGE <key> <start_id> + COUNT <count>` (with
    `entries.xrange`), hands the reply to `take`, which returns the runs to read; it has
    `queue_reads(pipe, runs)` queue their reads on one pipeline, sends it and iterates
    `decode(runs, replies)` to the end. A log whose first write read starts past the number
    asked for was trimmed there: TruncatedError. Events the scavenger removed from their
    entity (a truncation, a tombstone) are left out.
    """

    def __init__(self, registry: ContentRegistry, keys: RedisKeys, partition: int,
                 after: int, entity_types: Collection[str] | None) -> None:
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        self.registry, self.keys, self.partition = registry, keys, partition
        self.key = keys.log(partition)
        self.start = after + 1  # the log number the next entry must hold
        self.entity_types = None if entity_types is None else frozenset(entity_types)
        self.more = True
        self.count = LOG_PAGE
        self._first_ids: dict[tuple[str, str], str] = {}  # store_entity_id per entity
        self._read_any = False
        # With an archive: (entity type, entity ID, first, last) -> its entries there, for
        # the events the scavenger removed once archived (read, not left out).
        self.archived: Callable[[str, str, int, int], list[Any]] | None = None

    @property
    def start_id(self) -> str:
        return f"{self.start}-0"

    def take(self, entries: list[Any]) -> list[Run]:
        """The page of log entries as runs of the wanted entity types; moves `start`.

        An entry is one write: ID `<last log number>-0`, its events `n .. n + c - 1` at log
        numbers `last - c + 1 .. last`. The first entry read may hold events before `start`
        (read already): they are left out."""
        self.more = len(entries) == self.count
        runs: list[Run] = []
        wanted = self.entity_types
        names: dict[Any, str] = {}  # entity types and IDs as read, decoded once a page
        previous: Run | None = None
        for entry_id, values in flat_entries(entries):
            try:  # as append.lua writes them: "<last>-0", type T id I n N c C
                (type_field, raw_type, id_field, raw_id, n_field, raw_first, c_field,
                 raw_count) = values
                if (entry_id[-2:] not in _ZERO or text(type_field) != "type"
                        or text(id_field) != "id" or text(n_field) != "n"
                        or text(c_field) != "c"):
                    raise ValueError(entry_id)
                last, count = int(entry_id[:-2]), int(raw_count)
                entity_type = names.get(raw_type) or names.setdefault(raw_type, text(raw_type))
                entity_id = names.get(raw_id) or names.setdefault(raw_id, text(raw_id))
                first = int(raw_first)
            except (ValueError, TypeError, UnicodeDecodeError):
                last, count, entity_type, entity_id, first = self._pointer(entry_id, values)
            skipped = self._skipped(last, count)
            self.start = last + 1
            if wanted is not None and entity_type not in wanted:
                continue
            first, end = first + skipped, first + count - 1
            if (previous is not None and previous.last + 1 == first
                    and previous.entity_id == entity_id
                    and previous.entity_type == entity_type):
                previous = runs[-1] = Run(entity_type, entity_id, previous.first, end)
            else:
                previous = Run(entity_type, entity_id, first, end)
                runs.append(previous)
        return runs

    def _skipped(self, last: int, count: int) -> int:
        """How many of an entry's events were read already (before `start`); raises where
        the log does not go on from `start`: trimmed (the first entry read), or corrupt."""
        first_number = last - count + 1
        if count < 1 or last < self.start:
            raise self._corrupt(f"log entry {last}-0 holds {count} events: out of order")
        if first_number > self.start:
            if not self._read_any:
                raise TruncatedError(f"the log of partition {self.partition}",
                                     Position(self.partition, first_number))
            raise self._corrupt(f"the log skips from {self.start - 1} to {first_number}")
        self._read_any = True
        return self.start - first_number

    def _pointer(self, entry_id: Any, values: Sequence[Any]) -> tuple[int, int, str, str, int]:
        """(last log number, count, entity type, entity ID, first event number) of an entry
        that is not as append.lua writes it, or CorruptEventError saying why."""
        try:
            last = log_number(entry_id)
            fields = dict(zip(map(text, values[::2]), values[1::2], strict=False))
            return (last, int(text(fields["c"])), text(fields["type"]), text(fields["id"]),
                    int(text(fields["n"])))
        except (KeyError, ValueError, UnicodeDecodeError) as error:
            raise self._corrupt(f"log entry {text(entry_id)!r} is not '<last log number>-0' "
                                f"with a readable type, id, n and c ({error!r})") from error

    def _corrupt(self, message: str) -> CorruptEventError:
        return CorruptEventError(message, key=self.key, entity_type="", entity_id="",
                                 event_number=self.start)

    def queue_reads(self, pipe: Any, runs: Sequence[Run]) -> None:
        """Queues on `pipe` the reads of the runs: each run's entries, after (for an entity
        whose store_entity_id is not known yet) its truncation, where event 1's ID is kept
        once the scavenger removed it, and event 1 when the run does not start there."""
        if len(self._first_ids) >= _KNOWN_ENTITIES:  # between pages, never within one
            self._first_ids.clear()
        queued: set[tuple[str, str]] = set()  # an entity's runs after its first in the page
        for run in runs:  # find its store_entity_id known by then (`decode`)
            key = self.keys.stream(run.entity_type, run.entity_id)
            entity = (run.entity_type, run.entity_id)
            if entity not in self._first_ids and entity not in queued:
                queued.add(entity)
                pipe.hget(self.keys.truncated(run.entity_type, self.partition), run.entity_id)
                if self.archived is not None:  # event 1's ID once archived and removed
                    pipe.hget(self.keys.archived(run.entity_type, self.partition),
                              run.entity_id)
                if run.first != 1:
                    xrange(pipe, key, "1-0", "1-0")
            xrange(pipe, key, f"{run.first}-0", f"{run.last}-0")

    def archived_reads(self, runs: Sequence[Run], replies: list[Any]) -> list[
            tuple[str, str, int, int]]:
        """The archive reads (entity type, entity ID, first, last) `decode(runs, replies)`
        will ask `archived` for (set, as it was when `queue_reads` ran), for an async
        caller to fetch them first."""
        replies, wanted = list(replies), []
        seen = set(self._first_ids)
        for run in runs:
            if (run.entity_type, run.entity_id) not in seen:  # as queue_reads queued them
                seen.add((run.entity_type, run.entity_id))
                del replies[:2 + (run.first != 1)]  # truncation, archived mark, event 1
            entries = replies.pop(0)
            kept = None if isinstance(entries, Exception) else _kept_from(entries, run)
            if kept is not None and kept > run.first:
                wanted.append((run.entity_type, run.entity_id, run.first, kept - 1))
        return wanted

    def decode(self, runs: Sequence[Run], replies: list[Any]) -> Iterator[Event]:
        """The runs' events from the replies of `queue_reads(runs)`, in log order."""
        replies = list(replies)
        for run in runs:
            known = self._first_ids.get((run.entity_type, run.entity_id))
            key = self.keys.stream(run.entity_type, run.entity_id)
            pages = EntityPages(self.registry, key, run.entity_type, run.entity_id,
                                run.first - 1, partition=self.partition)
            with pages.reading():
                if known is None:
                    truncated = _raised(replies.pop(0))
                    if self.archived is not None:
                        pages.kept_store_entity_id = archived_mark(_raised(replies.pop(0)))[1]
                    if truncated is not None:
                        pages.kept_store_entity_id = truncation(truncated)[1]
                    if run.first != 1:
                        pages.take_first(_raised(replies.pop(0)))
                else:
                    pages.store_entity_id = known
                entries = _raised(replies.pop(0))
            kept = _kept_from(entries, run)
            if kept is not None and kept > run.first and self.archived is not None:
                found = _ending_at(self.archived(run.entity_type, run.entity_id, run.first,
                                                 kept - 1), kept - 1)
                entries, kept = found + flat_entries(entries), kept - len(found)
                kept = None if kept == run.first else kept
            if kept is not None:  # the scavenger removed the run's first events: left out
                pages.start = kept
                if pages.store_entity_id is None:  # event 1 among them
                    pages.store_entity_id = pages.kept_store_entity_id
                run = Run(run.entity_type, run.entity_id, kept, run.last)
            if len(entries) != run.last - run.first + 1:
                raise CorruptEventError(
                    f"the log points at events {run.first}..{run.last} but the stream holds "
                    f"{len(entries)} of them", key=key, entity_type=run.entity_type,
                    entity_id=run.entity_id, event_number=run.first)
            yield from pages.events(flat_entries(entries))
            self._first_ids[run.entity_type, run.entity_id] = pages.store_entity_id or ""


def _ending_at(entries: list[Any], last: int) -> list[Any]:
    """The entries (of the archive) that run without a gap to event `last`: those before a
    gap were not archived (removed by a truncation before the archive) and stay left out."""
    expected, start = last, len(entries)
    while start > 0 and int(entries[start - 1][0][:-2]) == expected:
        start, expected = start - 1, expected - 1
    return entries[start:]


def _raised(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def event_at(entries: list[Any], number: int) -> tuple[str, str, int] | None:
    """(entity type, entity ID, event number) at log number `number`, from the reply of
    `XRANGE <log> <number>-0 + COUNT 1` (the entry of the write that holds it, if any)."""
    for entry_id, values in flat_entries(entries):
        fields = dict(zip(map(text, values[::2]), values[1::2], strict=False))
        last, count = log_number(entry_id), int(text(fields["c"]))
        if last - count + 1 <= number <= last:
            return (text(fields["type"]), text(fields["id"]),
                    int(text(fields["n"])) + number - (last - count + 1))
    return None


def _kept_from(entries: list[Any], run: Run) -> int | None:
    """The first event of the run still stored when the scavenger removed those before it
    (the stream then holds the run's last events only; run.last + 1 when it holds none of
    them), else None."""
    entries = flat_entries(entries)
    if not entries:
        return run.last + 1
    try:
        first = int(text(entries[0][0]).split("-", 1)[0])
    except ValueError:
        return None
    if first > run.first and first - run.first + len(entries) == run.last - run.first + 1:
        return first
    return None
