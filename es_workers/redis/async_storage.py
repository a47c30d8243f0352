"""AsyncRedisStorage: RedisStorage's entity streams through a `redis.asyncio` client.

Same append script, keys, checks and errors, shared with `RedisStorage` rather than copied:
validation, encoding, decoding, paging and the outcome of an append in `entries.py`, the
opening and start-up checks in `opening.py`, Redis failures as es_workers errors in
`failures.py`, the retry while a cluster slot moves in `cluster.py`. Publishing and
subscriber state stay with the synchronous side (`es-workers publish` / `worker` on a
`Store` with the same prefix), which relays and handles what this storage appends like any
other event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import redis.asyncio

from ..codec import DEFAULT_MAX_EVENT_BYTES, ContentRegistry
from ..encryption import FieldCipher, MasterKeys, subjects_of
from ..errors import ConfigurationError, CorruptEventError
from ..event import Content, Event
from ..keyring import AsyncKeyring
from ..position import Position
from ..snapshot import StoredSnapshot
from ..upgrade import AsyncStoredEvents, Deletion
from .archiver import AsyncArchive, archived_mark
from .cluster import is_async_cluster
from .durability import Durability
from .entries import (
    DEFAULT_PARTITIONS,
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
    stored_values,
    xrange,
)
from .failures import appending, server_name, translated
from .keyring import AsyncRedisKeyStore
from .keys import RedisKeys, text
from .log import LogPages, event_at
from .opening import opening, run_steps_async
from .scripts import AsyncScript, BatchingScript
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


class AsyncRedisStorage:
    """Entity streams in Redis, awaited: `client` is a `redis.asyncio.Redis` (a real server
    or `fakeredis.FakeAsyncRedis`) or `redis.asyncio.RedisCluster`.

    `prefix`, `partitions`, `durability` and `max_event_bytes` mean what they mean for
    `RedisStorage`. A constructor cannot await: the storage is opened (the stored number of
    partitions read, the server checked) on first use, or by `await storage.open()`
    (`async with AsyncStore(...)` does it), which raises what `RedisStorage(...)` raises.
    """

    def __init__(
        self, client: Any, *, prefix: str = "es", partitions: int | None = None,
        durability: Durability | None = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        encryption: MasterKeys | None = None, archive: AsyncArchive | None = None,
    ) -> None:
        RedisKeys(prefix, DEFAULT_PARTITIONS if partitions is None else partitions)  # validates
        if archive is not None and archive.prefix != prefix:
            raise ConfigurationError(f"the archive is the prefix {archive.prefix!r}'s, not "
                                     f"{prefix!r}'s")
        self.archive = archive
        self.client = client
        self.max_event_bytes = max_event_bytes
        self.prefix = prefix
        self.server = server_name(client)
        self.durability = durability or Durability()
        self.registry = ContentRegistry()
        self.keyring: AsyncKeyring | None = None
        if encryption is not None:  # `Personal` fields, as RedisStorage
            self.keyring = AsyncKeyring(encryption, AsyncRedisKeyStore(client, prefix))
            self.registry.cipher = FieldCipher(self.keyring)
        # The append script; a documented hook, as RedisStorage.append_script. Appends of
        # concurrent tasks share pipelines (BatchingScript), but not on a cluster.
        self._on_cluster = is_async_cluster(client)
        pooled = not self._on_cluster and getattr(client, "connection_pool", None) is not None
        self.append_script = (BatchingScript if pooled else AsyncScript)(client, "append")
        self._snapshot_script = AsyncScript(client, "snapshot")
        self._truncate_script = AsyncScript(client, "truncate")
        self._remove_script = AsyncScript(client, "remove")
        self._wanted = partitions
        self._entity_keys: EntityKeys | None = None
        self._state: SubscriberState | None = None
        self._opening = asyncio.Lock()
        self._reader = self._xrange_client(client)

    @staticmethod
    def _xrange_client(client: Any) -> Any:
        """A client on the same pool whose XRANGE replies stay as Redis sends them. A
        RedisCluster has a pool per node: it is used as it is (entries.py flattens its
        replies)."""
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return client
        reader = redis.asyncio.Redis(connection_pool=pool)
        reader.set_response_callback("XRANGE", as_sent)
        return reader

    async def open(self) -> RedisKeys:
        """Reads (or, on a new prefix, records) the number of partitions; returns the keys."""
        return (await self._entities()).keys

    async def subscriber_state(self) -> SubscriberState:
        """Subscriber state on this client (for `AsyncStore.wait_for`)."""
        if self._state is None:
            self._state = SubscriberState(self.client, await self.open(), redrive_after_ms=0)
        return self._state

    async def _entities(self) -> EntityKeys:
        if self._entity_keys is not None:
            return self._entity_keys
        async with self._opening:
            if self._entity_keys is None:
                steps = opening(self.prefix, self._wanted, self.durability, self.server)
                with translated(self.server, "opening the store"):
                    self._entity_keys = EntityKeys(await run_steps_async(steps, self.client))
        return self._entity_keys

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        self.registry.register(entity_type, *content_types)

    def entity_types(self) -> list[str]:
        return self.registry.entity_types()

    async def write(self, entity_type: str, events: Sequence[Event]) -> list[Position]:
        """Appends the events (see `Storage.write`); returns their log positions."""
        if not events:
            return []
        entity_keys = await self._entities()
        entity_id = events[0].entity_id
        keys = entity_keys(entity_type, entity_id)
        partition = entity_keys.keys.partition(entity_type, entity_id)
        if self.keyring is not None:  # encoding is synchronous: the data keys first
            await self.keyring.prepare_write(subjects_of(events))
        # On a cluster the append wakes the cluster publisher, as RedisStorage's does.
        wake = entity_keys.keys.wake(partition) if self._on_cluster else None
        args = append_args(self.registry, entity_type, events, self.max_event_bytes,
                           wake=wake)
        with appending(self.server, entity_type, entity_id):
            if self.durability.waits:
                reply, confirmed = await self.append_script.then(keys, args,
                                                                 self.durability.command())
            else:
                reply, confirmed = await self.append_script(keys=keys, args=args), None
        return check_appended(keys[0], entity_type, events, reply, partition, self.durability,
                              confirmed)

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> AsyncIterator[Event]:
        """The entity's events after `after` (see `RedisStorage.read`)."""
        deletion = Deletion()
        return AsyncStoredEvents(self._read(entity_type, entity_id, after, deletion), deletion)

    async def _read(self, entity_type: str, entity_id: str, after: int,
                    deletion: Deletion) -> AsyncIterator[Event]:
        entity_keys = await self._entities()
        key = entity_keys(entity_type, entity_id)[0]
        pages = EntityPages(self.registry, key, entity_type, entity_id, after,
                            partition=entity_keys.keys.partition(entity_type, entity_id))
        reader = self._reader
        truncated = entity_keys.keys.truncated(entity_type, pages.partition)
        archived = (entity_keys.keys.archived(entity_type, pages.partition)
                    if self.archive is not None else None)
        doing = f"reading {entity_type} {entity_id!r}"
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
                    replies = await pipe.execute(raise_on_error=False)
                    mark = replies.pop(1) if archived is not None else None
                    if isinstance(mark, Exception):
                        raise mark
                    upto, pages.kept_store_entity_id = archived_mark(mark)
                    entries = pages.take_replies(replies)
                    deletion.deleted_through = pages.deleted_through
                else:
                    entries = await xrange(reader, key, f"{pages.start}-0", count=pages.count)
            if first_page:  # what the scavenger removed once archived, as RedisStorage
                async for event in self._archived(pages, upto, entries):
                    yield event
            events: Iterable[Event] = pages.decode(entries)
            if self.keyring is not None:  # decoding is synchronous: the data keys first,
                await self.keyring.prepare_read(stored_values(entries))
                # and the page decoded before another task may drop them (a forget)
                events = list(events)
            for event in events:
                yield event

    async def _archived(self, pages: EntityPages, upto: int,
                        entries: list[Any]) -> AsyncIterator[Event]:
        """`RedisStorage._archived_pages`, awaited."""
        if self.archive is None or upto < pages.start:
            return
        entries = flat_entries(entries)
        stored = int(text(entries[0][0]).split("-", 1)[0]) if entries else upto + 1
        last = min(upto, stored - 1)
        while pages.start <= last:
            first, end = pages.start, min(last, pages.start + READ_PAGE - 1)
            found = await self.archive.entries(pages.entity_type, pages.entity_id, first, end)
            if len(found) != end - first + 1:
                raise CorruptEventError(
                    f"the archive ({self.archive.server}) holds {len(found)} of the events "
                    f"{first}..{end} it was marked to hold; they are no longer in Redis",
                    key=pages.key, entity_type=pages.entity_type, entity_id=pages.entity_id,
                    event_number=first)
            if self.keyring is not None:
                await self.keyring.prepare_read(stored_values(found))
            for event in list(pages.events(found)):
                yield event

    async def position(self, entity_type: str, entity_id: str) -> int:
        """The entity's last event number (0 when it has none)."""
        keys = (await self._entities()).keys
        heads = keys.heads(entity_type, keys.partition(entity_type, entity_id))
        with translated(self.server, f"reading the position of {entity_type} {entity_id!r}"):
            value = await self.client.hget(heads, entity_id)
        return int(value) if value is not None else 0

    async def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        start = index_start(entity_type, after, limit)
        keys = (await self._entities()).keys
        pipe = self.client.pipeline(transaction=False)
        for partition in range(keys.partitions):
            pipe.zrangebylex(keys.index(entity_type, partition), start, "+", 0, limit + 1)
        with translated(self.server, f"listing {entity_type} entities"):
            replies = await pipe.execute()
        return entity_ids_page(replies, limit)

    # -- snapshots, as RedisStorage's ----------------------------------------------------

    async def save_snapshot(self, entity_type: str, entity_id: str,
                            snapshot: StoredSnapshot) -> None:
        """Stores the entity's state after the snapshot's event number (`Store.save_snapshot`)."""
        keys = snapshot_keys(await self.open(), entity_type, entity_id)
        with translated(self.server, f"saving a snapshot of {entity_type} {entity_id!r}",
                        writing=True):
            reply = await self._snapshot_script(keys, snapshot_args(entity_id, snapshot))
        check_saved(entity_type, entity_id, snapshot, reply)

    async def load_snapshot(self, entity_type: str, entity_id: str,
                            name: str) -> tuple[StoredSnapshot, datetime] | None:
        """The newest snapshot stored under `name`, with its event's time, or None."""
        keys = await self.open()
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(keys.snapshots(entity_type, entity_id), name)
        pipe.hget(keys.truncated(entity_type, keys.partition(entity_type, entity_id)), entity_id)
        with translated(self.server, f"loading a snapshot of {entity_type} {entity_id!r}"):
            value, kept = await pipe.execute()
        return loaded(name, value, kept)

    async def tombstone(self, entity_type: str, entity_id: str) -> int:
        """Deletes the entity for good: reads and later writes raise StreamDeletedError
        (`RedisStorage.tombstone`)."""
        return await self._remove(entity_type, entity_id, TOMBSTONED_MARK)

    async def delete(self, entity_type: str, entity_id: str) -> int:
        """The entity reads as empty until written again (`RedisStorage.delete`)."""
        return await self._remove(entity_type, entity_id, DELETED_MARK)

    async def _remove(self, entity_type: str, entity_id: str, mark: str) -> int:
        entity_keys = await self._entities()
        entity_keys(entity_type, entity_id)  # checks both names
        keys = remove_keys(entity_keys.keys, entity_type, entity_id)
        with translated(self.server, f"removing {entity_type} {entity_id!r} ({mark})",
                        writing=True):
            return removed(await self._remove_script(keys, remove_args(entity_id, mark)))

    async def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        """Marks the entity's events before `event_number` as removable (the scavenger removes
        them); returns the first kept event number."""
        keys = truncate_keys(await self.open(), entity_type, entity_id)
        with translated(self.server, f"truncating {entity_type} {entity_id!r}", writing=True):
            reply = await self._truncate_script(keys, truncate_args(entity_id, event_number))
        return check_truncated(entity_type, entity_id, event_number, reply)

    # -- the log (see log.py), as RedisStorage's -----------------------------------------

    async def partitions_count(self) -> int:
        return (await self.open()).partitions

    async def read_log(self, partition: int, after: int = 0,
                       entity_types: Collection[str] | None = None) -> AsyncIterator[Event]:
        """The events of one partition's log after log number `after`, in log order."""
        pages = LogPages(self.registry, await self.open(), partition, after, entity_types)
        reader, doing = self._reader, f"reading the log of partition {partition}"
        fetched: dict[tuple[str, str, int, int], list[Any]] = {}
        if self.archive is not None:  # fetched before each page is decoded (no I/O there)
            pages.archived = lambda *wanted: fetched[wanted]
        while pages.more:
            with translated(self.server, doing):
                entries = await xrange(reader, pages.key, pages.start_id, count=pages.count)
            runs = pages.take(entries)
            if not runs:
                continue
            pipe = reader.pipeline(transaction=False)
            pages.queue_reads(pipe, runs)
            with translated(self.server, doing):
                replies = await pipe.execute(raise_on_error=False)
            if self.archive is not None:  # outside: the archive raises its own errors
                fetched.clear()
                for wanted in pages.archived_reads(runs, replies):
                    fetched[wanted] = await self.archive.entries(*wanted)
            for event in pages.decode(runs, replies):
                yield event

    async def log_entry(self, position: Position) -> tuple[str, str, int] | None:
        """(entity type, entity ID, event number) at a log position; None if none."""
        key, entry_id = (await self.open()).log(position.partition), f"{position.number}-0"
        with translated(self.server, f"reading log entry {position}"):
            entries = await xrange(self._reader, key, entry_id, count=1)
        return event_at(entries, position.number)

    async def wait_log(self, after: Mapping[int, int], timeout: float) -> None:
        """As RedisStorage.wait_log: one blocking XREAD, or polling on a cluster."""
        keys = await self.open()
        streams = {keys.log(p): f"{after.get(p, 0)}-0" for p in range(keys.partitions)}
        with translated(self.server, "waiting for the log"):
            if not self._on_cluster:
                await self.client.xread(streams, count=1, block=max(1, int(timeout * 1000)))
                return
            deadline = asyncio.get_running_loop().time() + timeout
            while asyncio.get_running_loop().time() < deadline:
                for key, start in streams.items():
                    if await self.client.xread({key: start}, count=1):
                        return
                await asyncio.sleep(0.05)

    async def followed(self, name: str) -> dict[int, int]:
        keys = await self.open()
        pipe = self.client.pipeline(transaction=False)
        for partition in range(keys.partitions):
            pipe.hget(keys.followers(partition), name)
        with translated(self.server, f"reading follower {name!r}"):
            replies = await pipe.execute()
        return {p: int(v) for p, v in enumerate(replies) if v is not None}

    async def record_followed(self, name: str, done: Mapping[int, int]) -> None:
        if not done:
            return
        keys = await self.open()
        pipe = self.client.pipeline(transaction=False)
        for partition, number in done.items():
            pipe.hset(keys.followers(partition), name, number)
        with translated(self.server, f"recording follower {name!r}", writing=True):
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()
