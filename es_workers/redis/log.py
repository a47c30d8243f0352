"""The partition logs as append.lua writes them: one stream per partition, `{tag}:log`,
whose entry IDs are the log numbers (`<n>-0`, from 1, no gaps) and whose entries point to
the entity stream entry holding the event (fields type, id, n). That entry holds the event
and its log number (`p`): a pointer costs a fifth of a copy (README, "Log and positions").

No I/O here, as in `entries.py`: `LogPages` says which XRANGEs to send and turns their
replies into Events, for `RedisStorage` and `AsyncRedisStorage` alike.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..codec import ContentRegistry
from ..errors import CorruptEventError, TruncatedError
from ..event import Event
from ..position import Position
from .entries import EntityPages, flat_entries
from .keys import RedisKeys, text

LOG_PAGE = 500
_ZERO = (b"-0", "-0")
_KNOWN_ENTITIES = 4096


@dataclass(frozen=True, slots=True)
class Run:
    """Log entries that point at consecutive events of one entity: one XRANGE reads them."""

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
    `entries.xrange`), hands the reply to `take`, which returns the runs to read; for each
    it sends `entity_reads(runs)` XRANGEs in one pipeline and iterates
    `decode(runs, replies)` to the end. A log whose first entry is past the one asked for
    was trimmed there: TruncatedError.
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

    @property
    def start_id(self) -> str:
        return f"{self.start}-0"

    def take(self, entries: list[Any]) -> list[Run]:
        """The page of log entries as runs of the wanted entity types; moves `start`."""
        self.more = len(entries) == self.count
        runs: list[Run] = []
        wanted = self.entity_types
        names: dict[Any, str] = {}  # entity types and IDs as read, decoded once a page
        last: Run | None = None
        for entry_id, values in flat_entries(entries):
            try:  # as append.lua writes them: "<number>-0", type T id I n N
                type_field, raw_type, id_field, raw_id, n_field, raw_number = values
                if (entry_id[-2:] not in _ZERO or int(entry_id[:-2]) != self.start
                        or text(type_field) != "type" or text(id_field) != "id"
                        or text(n_field) != "n"):
                    raise ValueError(entry_id)
                entity_type = names.get(raw_type) or names.setdefault(raw_type, text(raw_type))
                entity_id = names.get(raw_id) or names.setdefault(raw_id, text(raw_id))
                event_number = int(raw_number)
            except (ValueError, TypeError, UnicodeDecodeError):
                entity_type, entity_id, event_number = self._pointer(
                    self._number(entry_id), values)
            self.start += 1
            if wanted is not None and entity_type not in wanted:
                continue
            if (last is not None and last.last + 1 == event_number
                    and last.entity_id == entity_id and last.entity_type == entity_type):
                last = runs[-1] = Run(entity_type, entity_id, last.first, event_number)
            else:
                last = Run(entity_type, entity_id, event_number, event_number)
                runs.append(last)
        return runs

    def _number(self, entry_id: bytes | str) -> int:
        try:
            number = log_number(entry_id)
        except ValueError as error:
            raise self._corrupt(str(error)) from error
        if number != self.start:
            if number > self.start:
                raise TruncatedError(f"the log of partition {self.partition}",
                                     Position(self.partition, number))
            raise self._corrupt(f"log entry {number}-0 is out of order: {self.start} expected")
        return number

    def _pointer(self, number: int, values: Sequence[Any]) -> tuple[str, str, int]:
        fields = dict(zip(map(text, values[::2]), values[1::2], strict=False))
        try:
            return text(fields["type"]), text(fields["id"]), int(text(fields["n"]))
        except (KeyError, ValueError) as error:
            raise self._corrupt(f"log entry {number}-0 lacks a readable type, id or n "
                                f"({error!r})") from error

    def _corrupt(self, message: str) -> CorruptEventError:
        return CorruptEventError(message, key=self.key, entity_type="", entity_id="",
                                 event_number=self.start)

    def entity_reads(self, runs: Sequence[Run]) -> list[tuple[str, str, str]]:
        """(key, start ID, end ID) of the XRANGEs that read the runs: each run's entries,
        after event 1 of an entity whose store_entity_id is not known yet."""
        reads = []
        for run in runs:
            key = self.keys.stream(run.entity_type, run.entity_id)
            if run.first != 1 and (run.entity_type, run.entity_id) not in self._first_ids:
                reads.append((key, "1-0", "1-0"))
            reads.append((key, f"{run.first}-0", f"{run.last}-0"))
        return reads

    def decode(self, runs: Sequence[Run], replies: list[Any]) -> Iterator[Event]:
        """The runs' events from the replies of `entity_reads(runs)`, in log order."""
        replies = list(replies)
        for run in runs:
            known = self._first_ids.get((run.entity_type, run.entity_id))
            key = self.keys.stream(run.entity_type, run.entity_id)
            pages = EntityPages(self.registry, key, run.entity_type, run.entity_id,
                                run.first - 1, partition=self.partition)
            with pages.reading():
                if run.first != 1 and known is None:
                    first = _raised(replies.pop(0))
                    pages.take_first(first)
                else:
                    pages.store_entity_id = known
                entries = _raised(replies.pop(0))
            if len(entries) != run.last - run.first + 1:
                raise CorruptEventError(
                    f"the log points at events {run.first}..{run.last} but the stream holds "
                    f"{len(entries)} of them", key=key, entity_type=run.entity_type,
                    entity_id=run.entity_id, event_number=run.first)
            yield from pages.events(flat_entries(entries))
            if len(self._first_ids) >= _KNOWN_ENTITIES:
                self._first_ids.clear()
            self._first_ids[run.entity_type, run.entity_id] = pages.store_entity_id or ""


def _raised(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply
