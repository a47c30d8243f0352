"""RedisStorage: entity streams in Redis Streams, appended by one Lua script."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import Any

import redis
from redis.cluster import RedisCluster

from ..codec import DEFAULT_MAX_EVENT_BYTES, ContentRegistry
from ..encryption import FieldCipher, MasterKeys
from ..errors import ConfigurationError, CorruptEventError
from ..event import Content, Event
from ..keyring import Keyring
from ..ports import Bus
from ..position import Position, check_log_keep, trim_from
from ..retention import HotWindow, KeepBound, Retention, Scavenged
from ..snapshot import StoredSnapshot
from ..upgrade import Reader, StoredEvents
from .archiver import (
    Archive,
    ArchiveBound,
    ArchiveCheck,
    ArchiveLag,
    OtherArchiver,
    RedisArchiver,
    archive_lag,
    archived_mark,
    verify,
)
from .cluster import is_cluster
from .durability import Durability
from .entries import (
    DELETED_MARK,
    READ_PAGE,
    TOMBSTONED_MARK,
    EntityKeys,
    EntityPages,
    append_args,
    as_sent,
    check_appended,
    entity_ids_page,
    flat_entries,
    index_start,
    xrange,
)
from .failures import appending, server_name, translated
from .footprint import Footprint, footprint
from .heartbeats import Heartbeats
from .keyring import RedisKeyStore
from .keys import text
from .layouts import APPEND
from .log import LogPages, event_at, log_number
from .opening import opening, run_steps
from .publisher import Publisher, PublisherOptions
from .scavenger import RedisScavenger
from .scripts import Script
from .snapshots import (
    check_saved,
    check_truncated,
    loaded,
    remove_args,
    remove_keys,
    removed,
    snapshot_args,
    snapshot_keys,
    truncate_args,
    truncate_keys,
)
from .state import SubscriberState
from .subscribers import SubscriberRegistry, subscriptions_of
from .worker_ports import RedisHeartbeats, RedisSubscriberRegistry, RedisSubscriberState

OUTBOX = APPEND.keys.index("outbox")


class RedisStorage:
    """Stores each entity as a Redis Stream whose entry IDs are the event numbers.

    `client` is a `redis.Redis` (a real server or fakeredis) or a
    `redis.cluster.RedisCluster`. `partitions` is fixed per
    prefix: the first RedisStorage to use a prefix records it in Redis, later ones read it
    (passing a different number is a ConfigurationError, since it would move entities).
    `publisher` configures the storage's publishing hook (`start_publish`), the outbox
    relay that `Store.start()` runs; `state` is where subscribers keep their checkpoints.
    `durability` says what each append waits for (replicas, the append-only file).

    A Redis that cannot be reached raises StorageUnavailableError (see `redis/failures.py`).
    A write holding an event larger than `max_event_bytes` encoded is refused
    (EventTooLargeError), nothing stored. With `encryption` (master keys), `Personal`
    fields are encrypted with data keys kept under the prefix (`keyring`); without it,
    writing one is refused.

    Every append also records its events in its partition's log (see `read_all`);
    `log=False` leaves that out (`bench/append.py` measures what the log costs with it:
    an app must not mix the two on one prefix, or its log misses events).

    With `archive` (a `PostgresArchive` of the same prefix), reads go through it: the events
    `es-workers archive` copied there and the scavenger removed from Redis are read from it,
    in order, before the hot ones (ArchiveUnavailableError if it cannot be reached then).
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        prefix: str = "es",
        partitions: int | None = None,
        publisher: PublisherOptions | None = None,
        durability: Durability | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        encryption: MasterKeys | None = None,
        log: bool = True,
        archive: Archive | None = None,
    ) -> None:
        self.client = client
        self.logs = log
        self.max_event_bytes = max_event_bytes
        self.server = server_name(client)
        self.durability = durability or Durability()
        with translated(self.server, "opening the store"):
            self.keys = run_steps(opening(prefix, partitions, self.durability, self.server),
                                  client)
        if archive is not None and archive.prefix != self.keys.prefix:
            raise ConfigurationError(f"the archive is the prefix {archive.prefix!r}'s, not "
                                     f"{self.keys.prefix!r}'s")
        self.archive = archive
        # The hot window of entity types the app gives none (wiring: ES_ARCHIVE_AFTER).
        self.hot_window = HotWindow(events=100)
        self.registry = ContentRegistry()
        self.retention: dict[str, Retention] = {}  # per entity type (retain)
        # Who else needs events kept (an archive); the scavenger asks each (see retention).
        self.keep_bounds: list[KeepBound] = []
        if archive is not None:  # never removes what the archive has not confirmed
            self.keep_bounds.append(ArchiveBound(client, self.keys))
        self.keyring: Keyring | None = None
        if encryption is not None:
            self.keyring = Keyring(encryption, RedisKeyStore(client, prefix))
            self.registry.cipher = FieldCipher(self.keyring)
        self.publisher_options = publisher or PublisherOptions()
        self.state = SubscriberState(
            client, self.keys, redrive_after_ms=self.publisher_options.redrive_after_ms
        )
        self.heartbeats = Heartbeats(client, self.keys)
        self.subscribers = SubscriberRegistry(client, self.keys)
        self._worker_ports = (
            RedisSubscriberState(self.state, self.server, decode=self.decode_entries,
                                 not_a_stream=self.not_a_stream,
                                 read_stored=self.read_stored),
            RedisHeartbeats(self.heartbeats, self.server),
            RedisSubscriberRegistry(self.subscribers, self.server),
        )
        # The append script; a documented hook: tests replace it to lose a reply.
        self.append_script = Script(client, "append")
        self._snapshot_script = Script(client, "snapshot")
        self._truncate_script = Script(client, "truncate")
        self._remove_script = Script(client, "remove")
        self._entity_keys = EntityKeys(self.keys)
        self._reader = self._open_reader(client)
        # On a cluster each append SPUBLISHes to its partition's channel when the outbox
        # was empty (see append.lua): the publisher waits for it.
        self._wake_channels = {
            self.keys.outbox(p): self.keys.wake(p) for p in range(self.partitions)
        } if is_cluster(client) else {}

    @staticmethod
    def _open_reader(client: Any) -> Any:
        """The client entity streams are read through.

        On one Redis: a client of its own on the same connection pool, whose XRANGE
        replies stay as Redis sends them (see entries.as_sent). A RedisCluster has a pool
        per node, so it reads itself; EntityPages flattens its parsed entries back."""
        if is_cluster(client):
            return client
        reader = redis.Redis(connection_pool=client.connection_pool)
        reader.set_response_callback("XRANGE", as_sent)
        return reader

    @property
    def partitions(self) -> int:
        """How many partitions the prefix has (fixed once it exists)."""
        return self.keys.partitions

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        self.registry.register(entity_type, *content_types)

    def entity_types(self) -> list[str]:
        return self.registry.entity_types()

    def write(self, entity_type: str, events: Sequence[Event]) -> list[Position]:
        """Appends the events (see `Storage.write`); returns their log positions."""
        if not events:
            return []
        entity_id = events[0].entity_id
        keys = self._entity_keys(entity_type, entity_id)
        if not self.logs:
            keys = keys[:APPEND.keys.required]  # without the log
        wake = self._wake_channels[keys[OUTBOX]] if self._wake_channels else None
        args = append_args(self.registry, entity_type, events, self.max_event_bytes,
                           wake=wake)
        # redis-py retries a command whose connection failed; the script then finds the
        # same store_event_ids in place and answers 1, so a lost reply never duplicates.
        with appending(self.server, entity_type, entity_id):
            if self.durability.waits:
                reply, confirmed = self.append_script.then(keys, args,
                                                           self.durability.command())
            else:
                reply, confirmed = self.append_script(keys=keys, args=args), None
        return check_appended(keys[0], entity_type, events, reply,
                              self.keys.partition(entity_type, entity_id), self.durability,
                              confirmed)

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Iterator[Event]:
        """The entity's events after `after`; TruncatedError (when iterated) if `after` is
        before its first kept event."""
        return self.read_stored(entity_type, entity_id, after, kept_only=True)

    def read_stored(self, entity_type: str, entity_id: str, after: int, *,
                    kept_only: bool = False) -> Iterator[Event]:
        """`read`; without `kept_only`, also the events before a truncation that are still
        stored (a subscriber's: the scavenger keeps them until every subscriber handled
        them)."""
        key = self._entity_keys(entity_type, entity_id)[0]
        pages = EntityPages(self.registry, key, entity_type, entity_id, after,
                            partition=self.keys.partition(entity_type, entity_id))
        pages.kept_only = kept_only
        # The pages' events are chained in C: one generator layer per event less (~5% of
        # hydrating).
        return StoredEvents(chain.from_iterable(self._pages(pages)), pages)

    def _pages(self, pages: EntityPages) -> Iterator[Iterator[Event]]:
        key, reader = pages.key, self._reader
        truncated = self.keys.truncated(pages.entity_type, pages.partition)
        archived = (self.keys.archived(pages.entity_type, pages.partition)
                    if self.archive is not None else None)
        doing = f"reading {pages.entity_type} {pages.entity_id!r}"
        upto = 0  # the entity's archived mark
        while pages.more:
            first_page = not pages.checked
            with translated(self.server, doing), pages.reading():
                if first_page:
                    pipe = reader.pipeline(transaction=False)
                    pipe.hget(truncated, pages.entity_id)
                    if archived is not None:
                        pipe.hget(archived, pages.entity_id)
                    if pages.needs_first:
                        xrange(pipe, key, "1-0", "1-0")
                    xrange(pipe, key, f"{pages.start}-0", count=pages.count)
                    replies = pipe.execute(raise_on_error=False)
                    mark = replies.pop(1) if archived is not None else None
                    if isinstance(mark, Exception):
                        raise mark
                    upto, pages.kept_store_entity_id = archived_mark(mark)
                    entries = pages.take_replies(replies)
                else:
                    entries = xrange(reader, key, f"{pages.start}-0", count=pages.count)
            if first_page:
                yield from self._archived_pages(pages, upto, entries)
            yield pages.decode(entries)

    def _archived_pages(self, pages: EntityPages, upto: int,
                        entries: list[Any]) -> Iterator[Iterator[Event]]:
        """The entity's events the archive holds (up to `upto`, its archived mark) that
        Redis no longer does, from `pages.start` to the first event `entries` (Redis' first
        page) hold, a page at a time. Redis first: the archive is asked only for what the
        scavenger removed."""
        if self.archive is None or upto < pages.start:
            return
        entries = flat_entries(entries)
        stored = int(text(entries[0][0]).split("-", 1)[0]) if entries else upto + 1
        last = min(upto, stored - 1)
        while pages.start <= last:
            first, end = pages.start, min(last, pages.start + READ_PAGE - 1)
            found = self.archive.entries(pages.entity_type, pages.entity_id, first, end)
            if len(found) != end - first + 1:
                raise CorruptEventError(
                    f"the archive ({self.archive.server}) holds {len(found)} of the events "
                    f"{first}..{end} it was marked to hold; they are no longer in Redis",
                    key=pages.key, entity_type=pages.entity_type, entity_id=pages.entity_id,
                    event_number=first)
            yield pages.events(found)  # moves pages.start past them once read

    def decode_entries(self, entity_type: str, entity_id: str, after: int,
                       entries: Sequence[Any], store_entity_id: str | None) -> Iterator[Event]:
        """The events of stream entries as XRANGE replies hold them (delivery reads them in
        its locking script), the first of which must be event `after + 1`;
        `store_entity_id` is event 1's ID when event 1 is not among them. Raises
        CorruptEventError / UnknownEventError naming the entry."""
        key = self._entity_keys(entity_type, entity_id)[0]
        pages = EntityPages(self.registry, key, entity_type, entity_id, after,
                            partition=self.keys.partition(entity_type, entity_id))
        found = flat_entries(list(entries))
        if self.archive is not None:  # a subscriber behind the scavenger: archived ones first
            found, store_entity_id = self._after_archived(pages, found, store_entity_id)
        pages.store_entity_id = store_entity_id
        return pages.events(found)

    def _after_archived(self, pages: EntityPages, entries: list[Any],
                        store_entity_id: str | None) -> tuple[list[Any], str | None]:
        """`entries` (read from Redis after `pages.start - 1`) with the archived events
        the scavenger removed before them, and event 1's ID when Redis no longer has it."""
        first = int(text(entries[0][0]).split("-", 1)[0]) if entries else pages.start
        if first <= pages.start and store_entity_id:
            return entries, store_entity_id
        archived = self.keys.archived(pages.entity_type, pages.partition)
        with translated(self.server, f"reading {pages.entity_type} {pages.entity_id!r}"):
            upto, first_id = archived_mark(self.client.hget(archived, pages.entity_id))
        if first > pages.start and upto >= first - 1 and self.archive is not None:
            entries = [*self.archive.entries(pages.entity_type, pages.entity_id, pages.start,
                                             first - 1), *entries]
        return entries, store_entity_id or first_id or store_entity_id

    def not_a_stream(self, entity_type: str, entity_id: str, after: int) -> CorruptEventError:
        """The error of an entity whose stream key holds another type than a stream, read
        from after `after` (delivery's locking script finds it)."""
        key = self._entity_keys(entity_type, entity_id)[0]
        return EntityPages(self.registry, key, entity_type, entity_id, after,
                           partition=0).not_a_stream()

    # -- ports.SubscriberStorage: what the workers of a DramatiqEventBus use ---------------

    def subscriber_state(self) -> RedisSubscriberState:
        """The subscribers' locks, checkpoints, failures and parked entities, as the
        workers use them (`ports.SubscriberState`: Redis errors translated)."""
        return self._worker_ports[0]

    def process_heartbeats(self) -> RedisHeartbeats:
        """The heartbeats worker processes write (`ports.Heartbeats`)."""
        return self._worker_ports[1]

    def subscriber_registry(self) -> RedisSubscriberRegistry:
        """The record of the subscriber IDs run under the prefix (`ports.SubscriberRegistry`)."""
        return self._worker_ports[2]

    def position(self, entity_type: str, entity_id: str) -> int:
        """The entity's last event number (0 when it has none)."""
        partition = self.keys.partition(entity_type, entity_id)
        with translated(self.server, f"reading the position of {entity_type} {entity_id!r}"):
            value = self.client.hget(self.keys.heads(entity_type, partition), entity_id)
        return int(value) if value is not None else 0

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        start = index_start(entity_type, after, limit)
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.zrangebylex(self.keys.index(entity_type, partition), start, "+", 0, limit + 1)
        with translated(self.server, f"listing {entity_type} entities"):
            replies = pipe.execute()
        return entity_ids_page(replies, limit)

    def heads(self, entity_type: str) -> dict[str, int]:
        """Every entity of the type with its last event number."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.hgetall(self.keys.heads(entity_type, partition))
        with translated(self.server, f"reading {entity_type} positions"):
            pages = pipe.execute()
        return {text(k): int(v) for page in pages for k, v in page.items()}

    def count_entities(self, entity_type: str) -> int:
        """How many entities of the type have events."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.zcard(self.keys.index(entity_type, partition))
        with translated(self.server, f"counting {entity_type} entities"):
            return sum(int(n) for n in pipe.execute())

    def outbox_backlog(self) -> int:
        """Outbox entries written but not yet relayed and acknowledged."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.xlen(self.keys.outbox(partition))
        with translated(self.server, "reading the outbox backlog"):
            lengths = pipe.execute(raise_on_error=False)
        return sum(int(n) for n in lengths if isinstance(n, int))

    # -- snapshots (see snapshots.py) ----------------------------------------------------

    def save_snapshot(self, entity_type: str, entity_id: str, snapshot: StoredSnapshot) -> None:
        """Keeps the snapshot beside the entity (SnapshotError if its event is not stored)."""
        keys = snapshot_keys(self.keys, entity_type, entity_id)
        with translated(self.server, f"saving a snapshot of {entity_type} {entity_id!r}",
                        writing=True):
            reply = self._snapshot_script(keys=keys, args=snapshot_args(entity_id, snapshot))
        check_saved(entity_type, entity_id, snapshot, reply)

    def load_snapshot(self, entity_type: str, entity_id: str,
                      name: str) -> tuple[StoredSnapshot, datetime] | None:
        """The entity's snapshot of the state class `name`, with its event's time."""
        truncated = self.keys.truncated(entity_type, self.keys.partition(entity_type, entity_id))
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.snapshots(entity_type, entity_id), name)
        pipe.hget(truncated, entity_id)
        with translated(self.server, f"loading a snapshot of {entity_type} {entity_id!r}"):
            value, kept = pipe.execute()
        return loaded(name, value, kept)

    # -- retention (see es_workers.retention) ---------------------------------------------

    def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        """Records that the entity's events before `event_number` are no longer kept;
        returns its first kept event number (a truncation never moves back)."""
        keys = truncate_keys(self.keys, entity_type, entity_id)
        with translated(self.server, f"truncating {entity_type} {entity_id!r}", writing=True):
            reply = self._truncate_script(keys=keys, args=truncate_args(entity_id, event_number))
        return check_truncated(entity_type, entity_id, event_number, reply)

    def _truncate_many(self, entity_type: str, truncations: Sequence[tuple[str, int]]) -> None:
        """`truncate_before` of entities of one type and partition, in one round trip."""
        calls = [(truncate_keys(self.keys, entity_type, entity_id),
                  truncate_args(entity_id, number)) for entity_id, number in truncations]
        replies = self._truncate_script.many(calls)
        for (entity_id, number), reply in zip(truncations, replies, strict=True):
            check_truncated(entity_type, entity_id, number, reply)

    def tombstone(self, entity_type: str, entity_id: str) -> int:
        """The entity is gone for good (see remove.lua); returns its head, or -1 when it
        was tombstoned already."""
        return self._remove(entity_type, entity_id, TOMBSTONED_MARK)

    def delete(self, entity_type: str, entity_id: str) -> int:
        """The entity reads as empty until written again (see remove.lua); returns its
        head (the last deleted event), or -1 when there was nothing to delete."""
        return self._remove(entity_type, entity_id, DELETED_MARK)

    def _remove(self, entity_type: str, entity_id: str, mark: str) -> int:
        keys = remove_keys(self.keys, self._check_names(entity_type, entity_id), entity_id)
        with translated(self.server, f"removing {entity_type} {entity_id!r} ({mark})",
                        writing=True):
            return removed(self._remove_script(keys=keys, args=remove_args(entity_id, mark)))

    def footprint(self, entity_type: str, subscriber_ids: Sequence[str]) -> Footprint:
        """The entity type's estimated memory and what a scavenge would free now, from a
        sample of its entities (see `footprint.py`)."""
        with translated(self.server, f"estimating the memory of {entity_type}"):
            return footprint(self.client, self.keys, self.state, entity_type,
                             self.retention.get(entity_type), subscriber_ids,
                             bounds=self.keep_bounds, archived=self.archive is not None)

    def _check_names(self, entity_type: str, entity_id: str) -> str:
        self._entity_keys(entity_type, entity_id)  # checks both names
        return entity_type

    def retain(self, entity_type: str, retention: Retention) -> None:
        """Declares the entity type's retention limits: the scavenger applies them."""
        self.retention[entity_type] = retention

    def scavenge(self, subscribers: Mapping[str, Sequence[str]], *,
                 batch: int = 500) -> Scavenged:
        """Removes what truncations and the retention limits allow, never an event a
        subscriber has not handled: those of `subscribers` (entity type -> subscriber IDs)
        and every one recorded under the prefix (see `subscribers.py`). See
        `scavenger.py`."""
        every = {entity_type: set(ids) for entity_type, ids in subscribers.items()}
        for entity_type in self.entity_types():
            every.setdefault(entity_type, set())
        with translated(self.server, "reading the subscribers"):
            recorded = self.subscribers.recorded()
        for subscriber_id, types in recorded.items():
            # An unreadable record: that subscriber may read any type.
            for entity_type in types if types is not None else list(every):
                every.setdefault(entity_type, set()).add(subscriber_id)
        scavenger = RedisScavenger(self.client, self.keys, self.state, self._truncate_many,
                                   batch=batch, bounds=self.keep_bounds,
                                   archived=self.archive is not None)
        with translated(self.server, "scavenging", writing=True):
            return scavenger.run(self.retention,
                                 {t: sorted(ids) for t, ids in every.items()})

    # -- the log (see log.py) ------------------------------------------------------------

    def read_log(self, partition: int, after: int = 0,
                 entity_types: Collection[str] | None = None) -> Iterator[Event]:
        """The events of one partition's log after log number `after`, in log order (of
        `entity_types` only, when given). TruncatedError where the log was trimmed."""
        pages = LogPages(self.registry, self.keys, partition, after, entity_types)
        if self.archive is not None:
            pages.archived = self.archive.entries
        reader, doing = self._reader, f"reading the log of partition {partition}"
        while pages.more:
            with translated(self.server, doing):
                entries = xrange(reader, pages.key, pages.start_id, count=pages.count)
            runs = pages.take(entries)
            if not runs:
                continue
            pipe = reader.pipeline(transaction=False)
            pages.queue_reads(pipe, runs)
            with translated(self.server, doing):
                replies = pipe.execute(raise_on_error=False)
            yield from pages.decode(runs, replies)

    def log_entry(self, position: Position) -> tuple[str, str, int] | None:
        """The (entity type, entity ID, event number) at a log position, None if there is
        none (not written yet, or trimmed)."""
        key, entry_id = self.keys.log(position.partition), f"{position.number}-0"
        with translated(self.server, f"reading log entry {position}"):
            entries = xrange(self._reader, key, entry_id, count=1)
        return event_at(entries, position.number)

    def wait_log(self, after: Mapping[int, int], timeout: float) -> None:
        """Returns when a partition's log holds an entry past `after` (partition -> log
        number; 0 for those not named), or after `timeout` seconds. One blocking XREAD on
        one Redis; on a cluster (a read may not span slots) it polls each log instead."""
        keys = [self.keys.log(p) for p in range(self.partitions)]
        ids = [f"{after.get(p, 0)}-0" for p in range(self.partitions)]
        with translated(self.server, "waiting for the log"):
            if not is_cluster(self.client):
                self.client.xread(dict(zip(keys, ids, strict=True)), count=1,
                                  block=max(1, int(timeout * 1000)))
                return
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for key, start in zip(keys, ids, strict=True):
                    if self.client.xread({key: start}, count=1):
                        return
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def followed(self, name: str) -> dict[int, int]:
        """The log numbers the follower `name` has done, per partition (none: {})."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.hget(self.keys.followers(partition), name)
        with translated(self.server, f"reading follower {name!r}"):
            replies = pipe.execute()
        return {p: int(v) for p, v in enumerate(replies) if v is not None}

    def record_followed(self, name: str, done: Mapping[int, int]) -> None:
        """Records the log numbers the follower `name` has done (see `trim_logs`)."""
        if not done:
            return
        pipe = self.client.pipeline(transaction=False)
        for partition, number in done.items():
            pipe.hset(self.keys.followers(partition), name, number)
        with translated(self.server, f"recording follower {name!r}", writing=True):
            pipe.execute()

    def trim_logs(self, keep: int | None = None, keep_for_ms: int | None = None) -> int:
        """Trims each partition's log, keeping at least its last `keep` events or those of
        the last `keep_for_ms` milliseconds (by event time), whichever keeps more (and the
        rest of the write holding the first of them), never past what a follower recorded
        as done; returns the number of log entries removed (one per write). The numbering
        goes on after a trim (a stream's last ID survives XTRIM)."""
        check_log_keep(keep, keep_for_ms)
        cutoff = None if keep_for_ms is None else int(
            (time.time() * 1000 - keep_for_ms) * 1000)  # event times are in microseconds
        removed = 0
        for partition in range(self.partitions):
            key = self.keys.log(partition)
            with translated(self.server, f"trimming the log of partition {partition}"):
                newest: Any = self.client.xrevrange(key, "+", "-", count=1)
                if not newest:
                    continue
                last = log_number(newest[0][0])
                followers = self.client.hvals(self.keys.followers(partition))
                young = None if cutoff is None else self._first_young(
                    key, last - (keep or 1) + 1, cutoff)
                first = trim_from(last, keep or 1, [int(v) for v in followers], young)
                removed += int(self.client.xtrim(key, minid=f"{first}-0", approximate=False))
        return removed

    # -- the archive (see archiver.py) -------------------------------------------------------

    def archiver(self, windows: Mapping[str, HotWindow], default: HotWindow, *,
                 batch: int = 5000, lease_ms: int = 15_000,
                 also: Sequence[OtherArchiver] = (), pace: float = 1.0) -> RedisArchiver:
        """The archiver of this storage's entity types (`es-workers archive`): copies their
        events older than the hot window (`windows` per type, over `default`) to the
        archive, and marks them archived for the scavenger; each pass also runs the
        archivers in `also` (the eventsourcing applications'). While it keeps up it rests
        `pace` times as long as each partition's work took (see `RedisArchiver`)."""
        if self.archive is None:
            raise ConfigurationError("this storage has no archive: set ES_ARCHIVE_URL")
        return RedisArchiver(self.client, self.keys, self.archive,
                             entity_types=self.entity_types(), windows=windows,
                             default=default, batch=batch, lease_ms=lease_ms, also=also,
                             pace=pace)

    def archive_lag(self, entity_type: str, window: HotWindow, *,
                    heads: Mapping[str, int] | None = None,
                    marks: Mapping[str, int] | None = None) -> ArchiveLag:
        """The entity type's events past `window` (by count) not yet archived, and the time
        of the oldest of them (`es-workers status`); from its `heads` and archived `marks`
        when the caller has read them already."""
        heads = self.heads(entity_type) if heads is None else heads
        marks = self.archived_marks(entity_type) if marks is None else marks
        with translated(self.server, f"reading the archive lag of {entity_type}"):
            return archive_lag(self.client, self.keys, entity_type, window, heads, marks)

    def verify_archive(self, entity_type: str) -> ArchiveCheck:
        """Compares the archive with Redis for every entity of the type that has archived
        events: the archive must hold each of its events up to its mark, and those Redis
        still holds too must be the same (a checksum of their stored fields)."""
        if self.archive is None:
            raise ConfigurationError("this storage has no archive: set ES_ARCHIVE_URL")
        with translated(self.server, f"verifying the archive of {entity_type}"):
            return verify(self.client, self.keys, self.archive, entity_type,
                          self.archived_marks(entity_type))

    def archived_marks(self, entity_type: str) -> dict[str, int]:
        """Every entity of the type that has archived events, with its archived mark."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.partitions):
            pipe.hgetall(self.keys.archived(entity_type, partition))
        with translated(self.server, f"reading {entity_type} archived marks"):
            pages = pipe.execute()
        return {text(k): archived_mark(v)[0] for page in pages for k, v in page.items()}

    def _first_young(self, key: str, before: int, cutoff: int, page: int = 200,
                     most: int = 10_000) -> int:
        """The first log number of the oldest write whose events are not older than
        `cutoff` (microseconds), among the log entries before number `before`; `before` if
        none is (at most `most` entries are looked at: a trim leaves the rest to the next).
        An event no longer stored (scavenged) counts as old."""
        start, seen = "-", 0
        while seen < most:
            entries: Any = self.client.xrange(key, start, f"{before - 1}-0", count=page)
            if not entries:
                return before
            pipe = self.client.pipeline(transaction=False)
            pointers = []
            for entry_id, fields in entries:
                values = {text(k): text(v) for k, v in fields.items()}
                first = log_number(entry_id) - int(values["c"]) + 1
                pointers.append(first)
                stream = self.keys.stream(values["type"], values["id"])
                pipe.xrange(stream, f"{values['n']}-0", f"{values['n']}-0")
            for first, found in zip(pointers, pipe.execute(), strict=True):
                stored = found[0][1].get(b"t", found[0][1].get("t")) if found else None
                if stored is not None and int(text(stored)) >= cutoff:
                    return first
            seen += len(entries)
            start = f"({text(entries[-1][0])}"
        return log_number(entries[-1][0]) + 1  # not looked at past there: kept
    def start_publish(self, bus: Bus, reader: Reader, stop: threading.Event, *,
                      logger: logging.Logger | None = None) -> None:
        """Relays until `stop`; first refuses (ConfigurationError) if another app runs one of
        the bus's subscriber IDs under this prefix (see `subscribers.py`)."""
        with translated(self.server, "recording the subscribers"):
            self.subscribers.claim(subscriptions_of(bus, self.entity_types()))
        Publisher(self, bus, self.publisher_options, reader=reader, logger=logger).run(stop)

    def close(self) -> None:
        self.client.close()
