"""RedisStorage: entity streams in Redis Streams, appended by one Lua script."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.cluster import RedisCluster

from .. import metrics
from ..codec import ContentRegistry
from ..errors import ConcurrencyError, ConfigurationError, CorruptEventError
from ..event import Content, Event
from ..names import check_entity_id, check_entity_type
from ..ports import Bus
from ..upgrade import Reader
from .cluster import is_cluster
from .keys import RedisKeys, text
from .publisher import Publisher, PublisherOptions
from .scripts import Script
from .state import SubscriberState

DEFAULT_PARTITIONS = 16
_READ_PAGE = 1000
_KNOWN_ENTITIES = 4096
# The fields of an entry as append.lua writes them, in order, as replies hold them without
# and with decode_responses.
_RAW_FIELDS = [b"n", b"d", b"t", b"e"]
_TEXT_FIELDS = ["n", "d", "t", "e"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def _as_sent(response: Any, **options: Any) -> Any:
    return response


def _pairs(values: list[Any]) -> dict[Any, Any]:
    return dict(zip(values[::2], values[1::2], strict=False))


class RedisStorage:
    """Stores each entity as a Redis Stream whose entry IDs are the event numbers.

    `client` is a `redis.Redis` (a real server or fakeredis) or a
    `redis.cluster.RedisCluster`. `partitions` is fixed per
    prefix: the first RedisStorage to use a prefix records it in Redis, later ones read it
    (passing a different number is a ConfigurationError, since it would move entities).
    `publisher` configures the storage's publishing hook (`start_publish`), the outbox
    relay that `Store.start()` runs; `state` is where subscribers keep their checkpoints.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        prefix: str = "es",
        partitions: int | None = None,
        publisher: PublisherOptions | None = None,
    ) -> None:
        self.client = client
        self.keys = self._open_keys(client, prefix, partitions)
        self.registry = ContentRegistry()
        self.publisher_options = publisher or PublisherOptions()
        self.state = SubscriberState(
            client, self.keys, redrive_after_ms=self.publisher_options.redrive_after_ms
        )
        # The append script; a documented hook: tests replace it to lose a reply.
        self.append_script = Script(client, "append")
        self._known_entities: dict[tuple[str, str], list[str]] = {}
        self._reader, self._parsed_entries = self._open_reader(client)
        # On a cluster each append SPUBLISHes to its partition's channel when the outbox
        # was empty (see append.lua): the publisher waits for it.
        self._wake_channels = {
            self.keys.outbox(p): self.keys.wake(p) for p in range(self.partitions)
        } if is_cluster(client) else {}

    @staticmethod
    def _open_reader(client: Any) -> tuple[Any, bool]:
        """The client entity streams are read through, and whether its XRANGE replies are
        parsed into dicts.

        On one Redis: a client of its own on the same connection pool, whose XRANGE
        replies stay as Redis sends them: redis-py would turn every entry into a dict, a
        fifth of the time it takes to hydrate an entity. A RedisCluster has a pool per
        node, so it reads itself and its entries are flattened back."""
        if is_cluster(client):
            return client, True
        reader = redis.Redis(connection_pool=client.connection_pool)
        reader.set_response_callback("XRANGE", _as_sent)
        return reader, False

    @staticmethod
    def _open_keys(
        client: redis.Redis | RedisCluster, prefix: str, partitions: int | None
    ) -> RedisKeys:
        wanted = DEFAULT_PARTITIONS if partitions is None else partitions
        keys = RedisKeys(prefix, wanted)  # validates before anything is written
        client.hsetnx(keys.meta(), "partitions", wanted)
        stored = client.hget(keys.meta(), "partitions")
        if stored is None or not text(stored).isdigit():
            raise ConfigurationError(f"{keys.meta()!r} holds no valid 'partitions': {stored!r}")
        actual = int(text(stored))
        if partitions is not None and actual != partitions:
            raise ConfigurationError(
                f"prefix {prefix!r} was created with {actual} partitions, not {partitions}; "
                "the number of partitions cannot change (it decides where entities live)"
            )
        return RedisKeys(prefix, actual)

    @property
    def partitions(self) -> int:
        return self.keys.partitions

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        self.registry.register(entity_type, *content_types)

    def entity_types(self) -> list[str]:
        return self.registry.entity_types()

    def write(self, entity_type: str, events: Sequence[Event]) -> None:
        if not events:
            return
        entity_id = events[0].entity_id
        keys = self._entity_keys(entity_type, entity_id)
        expected = events[0].event_number - 1
        args: list[Any] = [entity_type, entity_id, expected, len(events)]
        event_time, micros = None, 0
        checked: type | None = None  # the class last checked by registry.encode
        for number, event in enumerate(events, start=expected + 1):
            if event.entity_id != entity_id or event.event_number != number:
                raise ValueError("a write holds events of one entity with consecutive numbers")
            if event.event_time is not event_time:  # the events of a write share their time
                event_time = event.event_time
                micros = (event_time - EPOCH) // MICROSECOND
            content = event.content
            if content.__class__ is checked:  # as the event before: checked, same name
                data = checked.__pydantic_serializer__.to_json(content)
            else:
                name, data = self.registry.encode(entity_type, content)
                checked = content.__class__
            args += (name, data, micros, event.store_event_id)
        if self._wake_channels:
            args.append(self._wake_channels[keys[3]])
        # redis-py retries a command whose connection failed; the script then finds the
        # same store_event_ids in place and answers 1, so a lost reply never duplicates.
        status, position = self.append_script(keys=keys, args=args)
        if status == 2:
            metrics.CONFLICTS.labels(entity_type).inc()
            raise ConcurrencyError(entity_type, entity_id, expected, int(position))
        if status == 0:
            metrics.APPENDS.labels(entity_type).inc(len(events))

    def _entity_keys(self, entity_type: str, entity_id: str) -> list[str]:
        """The entity's append.lua KEYS (its stream first), once its names are checked.

        Remembered for the last few thousand entities: a command reads an entity, then
        writes it, and names and keys cost ~1.5 us to check and build each time."""
        try:
            keys = self._known_entities.get((entity_type, entity_id))
        except TypeError:  # unhashable: not a name, as check_entity_* will say
            keys = None
        if keys is None:
            check_entity_type(entity_type)
            check_entity_id(entity_id)
            keys = self.keys.append_keys(entity_type, entity_id)
            if len(self._known_entities) >= _KNOWN_ENTITIES:
                self._known_entities.clear()
            self._known_entities[entity_type, entity_id] = keys
        return keys

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Iterator[Event]:
        key = self._entity_keys(entity_type, entity_id)[0]
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        store_entity_id: str | None = None
        start = after + 1
        while True:
            if store_entity_id is None and start != 1:  # event 1 holds the store_entity_id
                pipe = self._reader.pipeline(transaction=False)
                pipe.xrange(key, "1-0", "1-0")
                pipe.xrange(key, f"{start}-0", "+", count=_READ_PAGE + 1)
                first, entries = map(self._as_sent, pipe.execute())
                # A stream trimmed of event 1 (not something es_workers does) has lost it.
                store_entity_id = ""
                if first:
                    entry_id, values = first[0]
                    entry = (entry_id, _pairs(values))
                    store_entity_id = self._field(key, entry, "e", entity_type, entity_id)
            else:
                entries = self._as_sent(
                    self._reader.xrange(key, f"{start}-0", "+", count=_READ_PAGE + 1)
                )
            # One entry past the page says whether another page follows, without a round
            # trip that finds nothing; it is read again as the next page's first.
            more = len(entries) > _READ_PAGE
            if more:
                entries.pop()
            if not entries:
                return
            # Entries as the append script writes them are decoded inline (hydrating is
            # read-bound); anything else goes through _decode, which decodes it or raises
            # the error that explains it.
            decoders = self.registry.decoders(entity_type)
            raw = isinstance(entries[0][0], bytes)
            names, zero = (_RAW_FIELDS, b"-0") if raw else (_TEXT_FIELDS, "-0")
            from_timestamp, new_event = datetime.fromtimestamp, Event
            for entry_id, values in entries:
                try:
                    if values[::2] != names or entry_id[-2:] != zero:
                        raise ValueError(entry_id)
                    number = int(entry_id[:-2])
                    content = decoders[values[1]](values[3])
                    # float seconds are exact to the microsecond until the year 2255
                    event_time = from_timestamp(int(values[5]) / 1e6, UTC)
                    store_event_id = values[7].decode() if raw else values[7]
                except Exception:
                    event = self._decode(
                        key, entity_type, entity_id, (entry_id, _pairs(values)), store_entity_id
                    )
                    store_entity_id = event.store_entity_id
                else:
                    if number == 1:
                        store_entity_id = store_event_id
                    event = new_event(
                        entity_id,
                        entity_type,
                        number,
                        event_time,
                        content,
                        store_event_id,
                        store_entity_id or "",
                    )
                yield event
            if not more:
                return
            start = event.event_number + 1

    def _as_sent(self, entries: list[Any]) -> list[Any]:
        """XRANGE entries as Redis sends them: (ID, [field, value, ...])."""
        if not self._parsed_entries:
            return entries
        return [(entry_id, [x for pair in fields.items() for x in pair])
                for entry_id, fields in entries]

    def _field(
        self, key: str, entry: Any, field: str, entity_type: str, entity_id: str
    ) -> str:
        value = entry[1].get(field) if isinstance(entry[1], dict) else None
        if value is None:
            value = entry[1].get(field.encode()) if isinstance(entry[1], dict) else None
        if value is None:
            raise CorruptEventError(
                f"stored event lacks field {field!r}",
                key=key,
                entity_type=entity_type,
                entity_id=entity_id,
                event_number=self._number(key, entry[0], entity_type, entity_id),
            )
        return text(value)

    @staticmethod
    def _number(key: str, entry_id: bytes | str, entity_type: str, entity_id: str) -> int:
        number, _, sequence = text(entry_id).partition("-")
        if not number.isdigit() or sequence != "0":
            raise CorruptEventError(
                f"stream entry ID {text(entry_id)!r} is not '<event number>-0'",
                key=key, entity_type=entity_type, entity_id=entity_id, event_number=0,
            )
        return int(number)

    def _decode(
        self,
        key: str,
        entity_type: str,
        entity_id: str,
        entry: Any,
        store_entity_id: str | None,
    ) -> Event:
        number = self._number(key, entry[0], entity_type, entity_id)
        fields = {text(name): value for name, value in entry[1].items()}
        try:
            name, data = text(fields["n"]), fields["d"]
            micros = int(fields["t"])
            store_event_id = text(fields["e"])
        except (KeyError, ValueError) as error:
            raise CorruptEventError(
                f"stored event lacks or mangles field {error}",
                key=key, entity_type=entity_type, entity_id=entity_id, event_number=number,
            ) from error
        content = self.registry.decode(
            key=key,
            entity_type=entity_type,
            entity_id=entity_id,
            event_number=number,
            name=name,
            data=data,
        )
        return Event(
            entity_id=entity_id,
            entity_type=entity_type,
            event_number=number,
            event_time=EPOCH + timedelta(microseconds=micros),
            content=content,
            store_event_id=store_event_id,
            store_entity_id=store_event_id if number == 1 else store_entity_id or "",
        )

    def position(self, entity_type: str, entity_id: str) -> int:
        """The entity's last event number (0 when it has none)."""
        partition = self.keys.partition(entity_type, entity_id)
        value = self.client.hget(self.keys.heads(entity_type, partition), entity_id)
        return int(value) if value is not None else 0

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        check_entity_type(entity_type)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        # The token is the store_entity_id of the page's last entity; members are
        # "<store_entity_id><entity ID>", so "(" + token + "\xff" starts after that entity.
        start = "-" if after is None else f"({after}\xff"
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.zrangebylex(self.keys.index(entity_type, partition), start, "+", 0, limit + 1)
        merged = heapq.merge(*(map(text, page) for page in pipe.execute()))
        members = [member for _, member in zip(range(limit + 1), merged, strict=False)]
        page = members[:limit]
        token = page[-1][:36] if len(members) > limit else None
        return [member[36:] for member in page], token

    def heads(self, entity_type: str) -> dict[str, int]:
        """Every entity of the type with its last event number."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.hgetall(self.keys.heads(entity_type, partition))
        return {text(k): int(v) for page in pipe.execute() for k, v in page.items()}

    def count_entities(self, entity_type: str) -> int:
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.zcard(self.keys.index(entity_type, partition))
        return sum(int(n) for n in pipe.execute())

    def outbox_backlog(self) -> int:
        """Outbox entries written but not yet relayed and acknowledged."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.xlen(self.keys.outbox(partition))
        return sum(int(n) for n in pipe.execute(raise_on_error=False) if isinstance(n, int))

    def start_publish(self, bus: Bus, reader: Reader, stop: threading.Event) -> None:
        Publisher(self, bus, self.publisher_options, reader=reader).run(stop)

    def close(self) -> None:
        self.client.close()
