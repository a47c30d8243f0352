"""Entity stream entries as append.lua writes them: a write turned into the script's KEYS and
ARGV, its reply turned into an outcome, and XRANGE replies turned back into Events.

No I/O here: `RedisStorage` and `AsyncRedisStorage` send the commands and hand the replies
to these functions, so both stores validate, encode, decode and fail the same way.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, TypeVar

import redis
from redis.client import NEVER_DECODE

from .. import metrics
from ..codec import DEFAULT_MAX_EVENT_BYTES, ContentRegistry, check_size, content_json
from ..errors import (
    ConcurrencyError,
    ConfigurationError,
    CorruptEventError,
    StreamDeletedError,
    TruncatedError,
)
from ..event import NO_METADATA, Event, stored_event
from ..metadata import decode as decode_metadata
from ..metadata import encode as encode_metadata
from ..names import check_entity_id, check_entity_type
from ..personal import PLAIN, personal_fields
from ..position import Position
from .durability import Durability
from .keys import RedisKeys, text
from .layouts import APPEND

DEFAULT_PARTITIONS = 16
READ_PAGE = 1000
_KNOWN_ENTITIES = 4096
# The fields of an entry as append.lua writes them, in order, as replies hold them without
# and with decode_responses; the metadata field follows them when there is metadata.
_RAW_FIELDS = [b"n", b"d", b"t", b"e"]
_TEXT_FIELDS = ["n", "d", "t", "e"]
_RAW_METADATA, _TEXT_METADATA = b"m", "m"
# With a log the entry's log number follows the fields (before the metadata).
_RAW_LOGGED, _TEXT_LOGGED = b"p", "p"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def as_sent(response: Any, **options: Any) -> Any:
    """A response callback that keeps a reply as Redis sent it: redis-py would turn every
    XRANGE entry into a dict, a fifth of the time it takes to hydrate an entity."""
    return response


def stored_partitions(prefix: str, wanted: int | None, stored: bytes | str | None) -> RedisKeys:
    """The keys of `prefix` with the number of partitions Redis holds for it (`stored`, the
    meta hash's field once the storage set it if missing). `wanted` None takes any."""
    if stored is None or not text(stored).isdigit():
        raise ConfigurationError(f"{prefix}:meta holds no valid 'partitions': {stored!r}")
    actual = int(text(stored))
    if wanted is not None and actual != wanted:
        raise ConfigurationError(
            f"prefix {prefix!r} was created with {actual} partitions, not {wanted}; "
            "the number of partitions cannot change (it decides where entities live)"
        )
    return RedisKeys(prefix, actual)


class EntityKeys:
    """append.lua's KEYS per entity (its stream first), once its names are checked.

    Remembered for the last few thousand entities: a command reads an entity, then writes
    it, and names and keys cost ~1.5 us to check and build each time."""

    def __init__(self, keys: RedisKeys) -> None:
        self.keys = keys
        self._known: dict[tuple[str, str], list[str]] = {}

    def __call__(self, entity_type: str, entity_id: str) -> list[str]:
        try:
            found = self._known.get((entity_type, entity_id))
        except TypeError:  # unhashable: not a name, as check_entity_* will say
            found = None
        if found is None:
            check_entity_type(entity_type)
            check_entity_id(entity_id)
            found = self.keys.append_keys(entity_type, entity_id)
            if len(self._known) >= _KNOWN_ENTITIES:
                self._known.clear()
            self._known[entity_type, entity_id] = found
        return found


def append_args(registry: ContentRegistry, entity_type: str, events: Sequence[Event],
                max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, *,
                wake: str | None = None) -> list[Any]:
    """append.lua's ARGV for a non-empty write: checks the events are one entity's, numbered
    on from the first, of Content classes registered for the type, encoded as JSON that
    reads back (InvalidContentError), and each at most `max_event_bytes` encoded
    (EventTooLargeError). `wake`: the partition's wake-up channel (on a cluster)."""
    entity_id = events[0].entity_id
    expected = events[0].event_number - 1
    items: list[tuple[Any, ...]] = []
    event_time, micros = None, 0
    metadata, stored_metadata = NO_METADATA, ""
    checked: type | None = None  # the class last checked by registry.encode
    name, fields = "", PLAIN  # its event name and personal fields
    for number, event in enumerate(events, start=expected + 1):
        if event.entity_id != entity_id or event.event_number != number:
            raise ValueError("a write holds events of one entity with consecutive numbers")
        if event.event_time is not event_time:  # the events of a write share their time
            event_time = event.event_time
            micros = (event_time - EPOCH) // MICROSECOND
        if event.content.__class__ is checked:  # as the event before: checked, same name
            data = (registry.sealed_json(event, name, fields) if fields.names else
                    content_json(event, name))
        else:
            name, data = registry.encode(entity_type, event)
            checked = event.content.__class__
            fields = personal_fields(checked)
        if event.metadata is not metadata:  # the events of a write share their metadata
            metadata = event.metadata
            stored_metadata = encode_metadata(metadata)
        check_size(event, name, data, stored_metadata, max_event_bytes)
        items.append((name, data, micros, event.store_event_id, stored_metadata))
    tail = {} if wake is None else {"wake": wake}
    return APPEND.args.pack(items, entity_type=entity_type, entity_id=entity_id,
                            expected=expected, count=len(events), **tail)


# append.lua's statuses: the events were written (now, or by an earlier try of the write),
# or nothing was written because of another writer's events or a corrupt stream key.
(APPENDED, ALREADY_APPENDED, CONFLICT, OUT_OF_SEQUENCE, NOT_A_STREAM, LOG_NOT_A_STREAM,
 TOMBSTONED) = range(7)
NO_WAITING = Durability()
_NOT_A_STREAM = "the key holds another type than a stream"


def check_appended(key: str, entity_type: str, events: Sequence[Event], reply: Any,
                   partition: int, durability: Durability = NO_WAITING,
                   confirmed: Any = None) -> list[Position]:
    """The outcome of an append, for both storages: the log positions of the events
    append.lua wrote (in `partition`; none when written without a log). Raises what its
    reply says went wrong (ConcurrencyError if it found another writer's events in place,
    CorruptEventError naming the stream's `key`, or the log's, if the stream or the log
    could not take the events) and, when the append `durability` waits for replicas,
    DurabilityError if `confirmed` (the answer to `durability.command()`) confirms too
    little."""
    status, position, *logged = reply
    first = events[0]
    if status <= ALREADY_APPENDED:  # stored, now or by an earlier try of the same write
        if status == APPENDED:
            metrics.appends(entity_type).inc(len(events))
        if durability.waits:
            durability.check(confirmed, entity_type, first.entity_id, first.event_number,
                             events[-1].event_number)
        number = int(logged[0]) if logged else 0
        return [Position(partition, number + i) for i in range(len(events))] if number else []
    if status == TOMBSTONED:
        raise StreamDeletedError(entity_type, first.entity_id)
    if status == CONFLICT:
        metrics.CONFLICTS.labels(entity_type).inc()
        raise ConcurrencyError(entity_type, first.entity_id, first.event_number - 1, int(position))
    if status == OUT_OF_SEQUENCE:
        problem = (f"the stream holds an entry numbered {int(position)} although the "
                   f"entity's position is {first.event_number - 1} (an entry not written by "
                   "es_workers?)")
    elif status == LOG_NOT_A_STREAM:
        key = key.partition(":stream:")[0] + ":log"  # the partition's log (keys.py)
        problem = "the partition's log key holds another type than a stream"
    else:
        problem = _NOT_A_STREAM
    raise CorruptEventError(
        f"cannot append event {first.event_number}: {problem}; nothing was written",
        key=key, entity_type=entity_type, entity_id=first.entity_id,
        event_number=first.event_number,
    )


def index_start(entity_type: str, after: str | None, limit: int) -> bytes:
    """The ZRANGEBYLEX start of a page of entity IDs (each partition's index is read from
    there, `limit + 1` members). Checks the arguments."""
    check_entity_type(entity_type)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    # The token is the store_entity_id of the page's last entity; members are
    # "<store_entity_id><entity ID>" in UTF-8, compared byte by byte, so the bound is the
    # token then the byte 0xff, which no UTF-8 text holds: above every member of that
    # entity. (The text "\xff" would be sent as the bytes c3 bf, below the IDs that start
    # at U+00FF or beyond, which the next page then repeated.)
    return b"-" if after is None else b"(" + after.encode() + b"\xff"


def entity_ids_page(replies: list[Any], limit: int) -> tuple[list[str], str | None]:
    """The page of entity IDs, oldest first, from every partition's ZRANGEBYLEX reply, and
    the next page's token (None on the last page)."""
    merged = heapq.merge(*(map(text, page) for page in replies))
    members = [member for _, member in zip(range(limit + 1), merged, strict=False)]
    page = members[:limit]
    token = page[-1][:36] if len(members) > limit else None
    return [member[36:] for member in page], token


def _pairs(values: Any) -> dict[Any, Any]:
    if isinstance(values, dict):
        return values
    return dict(zip(values[::2], values[1::2], strict=False))


def stored_values(entries: list[Any]) -> Iterator[Any]:
    """Every field value of XRANGE entries (flat lists or dicts): where encrypted personal
    fields name their data keys."""
    for _, values in entries:
        yield from values.values() if isinstance(values, dict) else values


def flat_entries(entries: list[Any]) -> list[Any]:
    """Entries whose fields a client turned into dicts (RedisCluster's XRANGE callback) as
    the flat lists Redis sends."""
    if entries and isinstance(entries[0][1], dict):
        return [(i, [x for pair in values.items() for x in pair]) for i, values in entries]
    return entries


TOMBSTONED_MARK, DELETED_MARK = "tombstone", "deleted"


def truncation(value: bytes | str) -> tuple[int, str, str]:
    """An entity's truncation as truncate.lua and remove.lua write it, `<first kept>
    <event 1's ID>[ tombstone| deleted]`: (first kept, event 1's ID, the mark or '')."""
    kept, _, rest = text(value).partition(" ")
    first_id, _, mark = rest.partition(" ")
    return int(kept) if kept.isdigit() else 1, first_id, mark


class EntityPages:
    """Reading one entity page by page: which XRANGE to send next, and its reply decoded.

    The caller loops while `more`: it sends `XRANGE key <start>-0 + COUNT <count>`; for the
    first page, in one pipeline after `HGET <truncated> <entity ID>` and, when `needs_first`,
    `XRANGE key 1-0 1-0` (hand their replies to `take_replies`), all through `xrange`
    (replies left as bytes) and inside `reading()`; then it iterates `decode(entries)` to
    the end before asking for the next page.

    A read from before the entity's first kept event (truncate.lua) raises TruncatedError.

    Every entry must hold the next event number: a gap (or an entry before the one read
    from) is a CorruptEventError, as is a record that does not decode.
    """

    __slots__ = (
        "checked",
        "deleted_through",
        "entity_id",
        "entity_type",
        "kept_only",
        "kept_store_entity_id",
        "key",
        "more",
        "partition",
        "refill",
        "registry",
        "start",
        "store_entity_id",
    )

    count = READ_PAGE + 1  # one past the page says whether another follows

    def __init__(self, registry: ContentRegistry, key: str, entity_type: str, entity_id: str,
                 after: int, *, partition: int) -> None:
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        self.registry, self.key, self.partition = registry, key, partition
        self.entity_type, self.entity_id = entity_type, entity_id
        self.start = after + 1  # the event number the next entry must hold
        self.store_entity_id: str | None = None
        self.kept_store_entity_id = ""  # event 1's ID as truncate.lua kept it
        self.checked = False  # whether the entity's truncation was read (the first page)
        self.deleted_through = 0  # the deleted events a read from before them passed over
        self.refill = False  # the first page held only deleted events: read on regardless
        self.kept_only = True  # whether reading before the first kept event raises
        self.more = True

    @property
    def needs_first(self) -> bool:
        """Whether event 1 must be read too: it holds the store_entity_id."""
        return self.store_entity_id is None and self.start != 1

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Around the XRANGEs: a key that holds another type than a stream (Redis' WRONGTYPE)
        is a CorruptEventError naming it."""
        try:
            yield
        except redis.exceptions.ResponseError as error:
            if not str(error).startswith("WRONGTYPE"):
                raise
            raise self.not_a_stream() from error

    def not_a_stream(self) -> CorruptEventError:
        """The error of an entity whose stream key holds another type than a stream."""
        return self._corrupt(f"{_NOT_A_STREAM} (WRONGTYPE); it cannot be read or appended "
                             "to", self.start)

    def take_replies(self, replies: list[Any]) -> list[Any]:
        """The replies of the pipelined XRANGEs of event 1 and of the page, sent with
        `raise_on_error=False` (redis-py would rewrite a raised error's message): takes
        event 1's, returns the page's entries, raises a Redis error either holds."""
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        self.take_truncation(replies[0])
        if len(replies) == 3:
            self.take_first(replies[1])
        page: list[Any] = replies[-1]
        if self.deleted_through and page:  # read from before the deletion: skip its events
            self.refill = len(page) >= self.count
            page = [entry for entry in flat_entries(page)
                    if int(text(entry[0]).partition("-")[0]) >= self.start]
        return page

    def take_truncation(self, value: bytes | str | None) -> None:
        """The entity's truncation as truncate.lua records it, `<first kept> <event 1's
        ID>` (None: none): raises TruncatedError if the read starts before the first kept
        event."""
        self.checked = True
        if value is None:
            return
        kept, first_id, mark = truncation(value)
        if mark == TOMBSTONED_MARK and self.kept_only:  # a subscriber reads what is stored
            raise StreamDeletedError(self.entity_type, self.entity_id)
        self.kept_store_entity_id = first_id
        if mark == DELETED_MARK and self.kept_only and self.start < kept:
            # Deleted (store.delete): the entity reads as if it began after those events,
            # still under its store_entity_id.
            self.deleted_through = kept - 1
            self.start, self.store_entity_id = kept, first_id
        elif self.kept_only and self.start < kept:
            raise TruncatedError.of_entity(self.entity_type, self.entity_id, kept)


    def take_first(self, first: list[Any]) -> None:
        if self.deleted_through:  # store_entity_id taken from the deletion
            return
        # Event 1 removed (truncated and scavenged): its ID as truncate.lua kept it.
        self.store_entity_id = self.kept_store_entity_id
        if first:
            fields = self._fields(_pairs(first[0][1]), 1)
            self.store_entity_id = self._field(fields, "e", text, 1)

    def decode(self, entries: list[Any]) -> Iterator[Event]:
        """The page's events. Entries as the append script writes them are decoded inline
        (hydrating is read-bound); anything else goes through `_decode`, which decodes it or
        raises the error that explains it."""
        # One entry past the page is read again as the next page's first.
        refill, self.refill = self.refill, False
        self.more = len(entries) > READ_PAGE
        if self.more:
            entries.pop()
        if not entries:
            self.more = refill
            return
        self.more = self.more or refill
        # Moves `start` past the page's last entry once decoded (or raises).
        yield from self.events(flat_entries(entries))

    def events(self, entries: Sequence[Any]) -> Iterator[Event]:
        """The events of stream entries as XRANGE replies hold them (a flat list of fields
        per entry, raw or decoded), which must hold the event numbers from `start` on,
        moving `start` and `store_entity_id` along. The events before an entry out of
        sequence are handed out, then it raises CorruptEventError."""
        in_sequence = self._in_sequence(entries) if entries else 0
        if in_sequence == len(entries):
            return self._events(entries)  # not wrapped: a generator layer costs hydrating
        return chain(self._events(entries[:in_sequence]),
                     self._out_of_sequence(entries[in_sequence]))

    def _out_of_sequence(self, entry: Any) -> Iterator[Event]:
        """Raises the CorruptEventError of an entry out of sequence (when iterated: once
        the events before it were handed out and `start` moved past them)."""
        yield self._decode((entry[0], _pairs(entry[1])), self.start)

    def _in_sequence(self, entries: Sequence[Any]) -> int:
        """How many entries, from the first, hold the event numbers `start`, `start + 1`...

        XRANGE gives IDs in increasing order, so when every ID ends in '-0' and the first and
        the last entry hold the right numbers, so does every entry between. (An ID with
        another sequence number, '3-1', breaks that: 1-0 3-0 3-1 would pass as 1, 2, 3.)"""
        start, count = self.start, len(entries)
        zero = b"-0" if isinstance(entries[0][0], bytes) else "-0"
        try:
            if (int(entries[0][0][:-2]) == start
                    and int(entries[-1][0][:-2]) == start + count - 1
                    and all(entry_id[-2:] == zero for entry_id, _ in entries)):
                return count
        except ValueError:  # an ID of another form: found below
            pass
        for index, (entry_id, _) in enumerate(entries):
            number, _, sequence = text(entry_id).partition("-")
            if not number.isdigit() or int(number) != start + index or sequence != "0":
                return index
        return count

    def _events(self, entries: Sequence[Any]) -> Iterator[Event]:
        """`events` of entries known to be in sequence. Entries as the append script writes
        them are decoded inline (hydrating is read-bound); anything else goes through
        `_decode`, which decodes it or raises the error that explains it."""
        if not entries:
            return
        entity_type, entity_id = self.entity_type, self.entity_id
        decoders = self.registry.decoders(entity_type)
        raw = isinstance(entries[0][0], bytes)
        n_, d_, t_, e_ = _RAW_FIELDS if raw else _TEXT_FIELDS
        metadata_name = _RAW_METADATA if raw else _TEXT_METADATA
        logged_name = _RAW_LOGGED if raw else _TEXT_LOGGED
        # tuple.__new__ directly: a third of the cost of Position(...) (NamedTuple's
        # generated __new__), paid once per event hydrated.
        partition, new_tuple, position_class = self.partition, _NEW_TUPLE, Position
        from_timestamp, utc, new_event = datetime.fromtimestamp, UTC, stored_event
        first_id = self.store_entity_id or ""  # event 1's store_event_id
        # In sequence (checked by `events`): entry i holds event start + i.
        for number, (entry_id, values) in enumerate(entries, self.start):
            try:
                if len(values) == 10:  # with its log number (p), or before the log with m
                    n, name, d, data, t, micros, e, event_id, p, logged = values
                    if p == logged_name:
                        m, metadata = metadata_name, NO_METADATA
                        log_number = int(logged)
                        position = new_tuple(position_class, (partition, log_number))
                    else:
                        m, metadata, p, position = p, decode_metadata(logged), logged_name, None
                        log_number = 1
                elif len(values) == 12:
                    (n, name, d, data, t, micros, e, event_id, p, logged, m,
                     stored_metadata) = values
                    metadata = decode_metadata(stored_metadata)
                    log_number = int(logged)
                    position = new_tuple(position_class, (partition, log_number))
                else:  # stored before the log; a ValueError unless 8 values
                    n, name, d, data, t, micros, e, event_id = values
                    p, m, metadata, position = logged_name, metadata_name, NO_METADATA, None
                    log_number = 1
                if n != n_ or d != d_ or t != t_ or e != e_ or m != metadata_name or (
                        p != logged_name or log_number < 1):
                    raise ValueError(entry_id)  # `_decode` says what it is (no log number: 0)
                content = decoders[name](data)
                # float seconds are exact to the microsecond until the year 2255 (and since
                # 1685); a time beyond goes through `_decode`, exact
                since_epoch = int(micros)
                if not -_EXACT_MICROS < since_epoch < _EXACT_MICROS:
                    raise ValueError(micros)
                event_time = from_timestamp(since_epoch / 1e6, utc)
                store_event_id = event_id.decode() if raw else event_id
            except Exception:
                self.store_entity_id = first_id
                event = self._decode((entry_id, _pairs(values)), None)
                first_id = event.store_entity_id
            else:
                if number == 1:
                    first_id = store_event_id
                event = new_event(entity_id, entity_type, number, event_time, content,
                                  store_event_id, first_id, metadata, position)
            yield event
        self.store_entity_id = first_id
        self.start += len(entries)

    def _number(self, entry_id: bytes | str, expected: int | None) -> int:
        """The event number of an entry ID, which must be `expected` (None: known to be)."""
        number, _, sequence = text(entry_id).partition("-")
        if not number.isdigit() or sequence != "0":
            raise self._corrupt(
                f"stream entry ID {text(entry_id)!r} is not '<event number>-0'",
                int(number) if number.isdigit() else expected or self.start)
        found = int(number)
        if expected is not None and found != expected:
            raise self._corrupt(
                f"stream entry {found}-0 is out of sequence: event {expected} was expected "
                f"there (events missing, or an entry not written by es_workers)", found)
        return found

    def _corrupt(self, message: str, event_number: int) -> CorruptEventError:
        return CorruptEventError(message, key=self.key, entity_type=self.entity_type,
                                 entity_id=self.entity_id, event_number=event_number)

    def _fields(self, values: dict[Any, Any], number: int) -> dict[str, Any]:
        """An entry's fields by name as text (the values as stored)."""
        try:
            return {text(name): value for name, value in values.items()}
        except UnicodeDecodeError as error:
            raise self._corrupt(f"stored event has a field name that is not UTF-8 ({error})",
                                number) from error

    def _field(self, fields: dict[str, Any], name: str, parse: Callable[[Any], _T],
               number: int) -> _T:
        """The field `name` of an entry, parsed; CorruptEventError if missing or unreadable."""
        if name not in fields:
            raise self._corrupt(f"stored event lacks field {name!r} ({_FIELD_NAMES[name]})",
                                number)
        try:
            return parse(fields[name])
        except (ValueError, OverflowError, RecursionError) as error:
            raise self._corrupt(
                f"stored event field {name!r} ({_FIELD_NAMES[name]}) is unreadable: {error}",
                number) from error

    def _decode(self, entry: Any, expected: int | None) -> Event:
        number = self._number(entry[0], expected)
        fields = self._fields(entry[1], number)
        name = self._field(fields, "n", text, number)
        data = self._field(fields, "d", _as_stored, number)
        event_time = self._field(fields, "t", _event_time, number)
        store_event_id = self._field(fields, "e", text, number)
        metadata = self._field(fields, "m", decode_metadata, number) if "m" in fields else (
            NO_METADATA)
        logged = self._field(fields, "p", int, number) if "p" in fields else 0
        content = self.registry.decode(
            key=self.key, entity_type=self.entity_type, entity_id=self.entity_id,
            event_number=number, name=name, data=data,
        )
        return Event(
            entity_id=self.entity_id,
            entity_type=self.entity_type,
            event_number=number,
            event_time=event_time,
            content=content,
            store_event_id=store_event_id,
            store_entity_id=store_event_id if number == 1 else self.store_entity_id or "",
            metadata=metadata,
            position=Position(self.partition, logged) if logged > 0 else None,
        )


_T = TypeVar("_T")
_NEW_TUPLE: Any = tuple.__new__
_EXACT_MICROS = 2**53
_FIELD_NAMES = {"n": "event name", "d": "JSON data", "t": "event time, µs since 1970",
                "e": "store_event_id", "m": "metadata", "p": "log number"}


def _as_stored(value: Any) -> Any:
    return value


def _event_time(micros: bytes | str) -> datetime:
    """A stored event time (µs since 1970) as an aware UTC datetime; OverflowError past
    datetime's range."""
    return EPOCH + timedelta(microseconds=int(micros))


def xrange(client: Any, key: str, start: str, end: str = "+", count: int | None = None) -> Any:
    """Sends `XRANGE key start end [COUNT count]` on a client or pipeline (sync or async,
    one Redis or a cluster) with its reply left as bytes whatever the client's
    decode_responses: a field that is not UTF-8 must fail its own entry (`decode` names
    it), not the whole reply in redis-py."""
    options: dict[str, Any] = {NEVER_DECODE: [], "keys": [key]}  # keys: redis-py's cache
    if count is None:
        return client.execute_command("XRANGE", key, start, end, **options)
    return client.execute_command("XRANGE", key, start, end, "COUNT", count, **options)
