"""AsyncStore: `Store` for asyncio apps (FastAPI, Starlette, ...). It opens, reads and
appends entity streams without blocking the event loop; the events it appends are relayed
and handled like any other (`es-workers publish` / `worker` on a `Store` of the same data).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar, overload

from pydantic import BaseModel

from . import metrics
from .async_stream import AsyncStream
from .commit_log import AsyncFollower, AsyncLogReading, async_log_storage, async_read_all
from .errors import ConcurrencyError, ConfigurationError
from .event import Content, Handler, is_async
from .forgetting import FORGOTTEN_TYPE, SubjectForgotten, missing_notices
from .keyring import AsyncKeyring, Keyring
from .names import check_entity_id, check_entity_type, subscribers_to_wait_for
from .ports import (
    AsyncOpening,
    AsyncProgressStorage,
    AsyncStorage,
    Bus,
    Progress,
    async_retaining_storage,
    async_snapshot_storage,
    check_rebuild,
    rebuilding,
)
from .position import After, Position
from .retention import Retention, check_retention, check_truncate
from .snapshot import Snapshot, from_store, state_name, to_store
from .stream import check_stream
from .upgrade import AsyncReader, AsyncReading, EventUpgrade, check_upgrades

S = TypeVar("S", bound=BaseModel)


class AsyncStore:
    """The core of `es_workers.AsyncStore` (no backend, settings or wiring imported;
    `from_settings` and the default bus are the composition root's, `es_workers.app`).

    `AsyncStore(storage, bus=..., events={...}, upgrades={...})`, as `Store`. `storage` is
    an `AsyncRedisStorage` or an `AsyncInMemoryStorage`. Subscribers are not run here: they
    are a `Store`'s, in its worker processes (or its `start()` in memory). `bus` (on
    `es_workers.AsyncStore`, by default an `InMemoryEventBus`) tells `subscriber_ids`.
    `logger` receives the records of what it builds, as `Store`'s.
    """

    def __init__(
        self,
        storage: AsyncStorage,
        *,
        bus: Bus | None = None,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        logger: logging.Logger | None = None,
        retention: Mapping[str, Retention] | None = None,
    ) -> None:
        self.storage = storage
        self.retention = check_retention(retention)
        self.logger = logger
        self.bus: Bus = bus if bus is not None else self.default_bus(logger)
        self._owns_bus = bus is None
        for entity_type, content_types in (events or {}).items():
            storage.register(entity_type, *content_types)
            metrics.declare_entity_type(entity_type)
        if self._keyring_or_none() is not None:  # forget notices (forget)
            storage.register(FORGOTTEN_TYPE, SubjectForgotten)
        check_upgrades(upgrades or {})
        self.reader = AsyncReader(storage.read, upgrades or {})

    def default_bus(self, logger: logging.Logger | None) -> Bus:
        """The bus of a store given none; see `Store.default_bus`."""
        raise ConfigurationError(
            f"{type(self).__name__}(storage) needs a bus: pass bus=..., or build the store "
            "with es_workers.AsyncStore, whose default bus is an InMemoryEventBus")

    def open(self, entity_type: str, entity_id: str) -> AsyncStream:
        """A stream of the entity from its first event. Use it with `async with`."""
        return self.open_from(entity_type, entity_id, 0)

    def open_from(self, entity_type: str, entity_id: str, event_number: int) -> AsyncStream:
        """A stream whose first event read is `event_number + 1`; read it before writing."""
        check_stream(entity_type, entity_id, event_number)
        return AsyncStream(self.reader, self.storage.write, entity_type, entity_id, event_number)

    async def project(self, entity_type: str, entity_id: str, handler: Handler) -> None:
        """Calls the handler (a function or `async def`) with every event of the entity,
        upgraded, in order."""
        async with self.open(entity_type, entity_id) as stream:
            await stream.project(handler)

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> AsyncReading:
        """Events of the entity after `after`, upgraded: `async for event in ...`."""
        return self.reader.read(entity_type, entity_id, after)

    def read_all(self, after: After = None, *, entity_types: Collection[str] | None = None,
                 limit: int | None = None) -> AsyncLogReading:
        """`Store.read_all`, awaited: `async for event in store.read_all(...)`."""
        return async_read_all(self.storage, self.reader, after, entity_types, limit)

    def follow(self, after: After = None, *, entity_types: Collection[str] | None = None,
               name: str | None = None) -> AsyncFollower:
        """`Store.follow`, awaited: `async with store.follow() as f: async for e in f`;
        `f.stop()` ends it."""
        return AsyncFollower(self.storage, self.reader, after, entity_types, name)

    async def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        """`Store.truncate_before`, awaited."""
        check_truncate(entity_type, entity_id, event_number)
        return await async_retaining_storage(self.storage).truncate_before(
            entity_type, entity_id, event_number)

    async def tombstone(self, entity_type: str, entity_id: str) -> None:
        """`Store.tombstone`, awaited."""
        await async_retaining_storage(self.storage).tombstone(entity_type, entity_id)

    async def save_snapshot(self, entity_type: str, entity_id: str, state: BaseModel, *,
                            event_number: int) -> None:
        """`Store.save_snapshot`, awaited."""
        stored = to_store(entity_type, entity_id, state, event_number)
        await async_snapshot_storage(self.storage).save_snapshot(entity_type, entity_id, stored)

    async def load_snapshot(self, entity_type: str, entity_id: str,
                            state_type: type[S]) -> Snapshot[S] | None:
        """`Store.load_snapshot`, awaited."""
        check_entity_type(entity_type)
        check_entity_id(entity_id)
        found = await async_snapshot_storage(self.storage).load_snapshot(
            entity_type, entity_id, state_name(state_type))
        return from_store(found, state_type)

    def entity_types(self) -> list[str]:
        return self.storage.entity_types()

    async def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of the type's entity IDs, oldest first, and the next page's token."""
        return await self.storage.entity_ids(entity_type, after, limit)

    def subscriber_ids(self, entity_type: str) -> list[str]:
        return self.bus.subscriber_ids(entity_type)

    @overload
    async def wait_for(self, entity_type: str, entity_id: str, event_number: int, *,
                       subscriber_ids: Sequence[str] | None = None,
                       timeout: float = 5.0) -> None: ...

    @overload
    async def wait_for(self, entity_type: Position, *,
                       subscriber_ids: Sequence[str] | None = None,
                       timeout: float = 5.0) -> None: ...

    async def wait_for(
        self,
        entity_type: str | Position,
        entity_id: str | None = None,
        event_number: int | None = None,
        *,
        subscriber_ids: Sequence[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        """`Store.wait_for`, awaited: returns once the subscribers (all of the type's when
        None) have handled the entity up to `event_number` (or the event at a log
        Position); `WaitTimeoutError`, `ParkedError`. On Redis it waits for the checkpoint
        script's messages."""
        if isinstance(entity_type, Position):
            position = entity_type
            found = await async_log_storage(self.storage).log_entry(position)
            if found is None:
                raise ValueError(f"no event at {position} (not written yet, or trimmed)")
            entity_type, entity_id, event_number = found
        if entity_id is None or event_number is None:
            raise TypeError("wait_for takes an entity type, ID and event number, or a Position")
        wanted = subscribers_to_wait_for(
            entity_type, entity_id, self.subscriber_ids(entity_type), subscriber_ids
        )
        if not wanted or event_number <= 0:
            return
        if isinstance(self.storage, AsyncProgressStorage):
            state = await self.storage.subscriber_state()
            await state.wait_handled_async(wanted, entity_type, entity_id, event_number,
                                           timeout)
        elif isinstance(self.bus, Progress):
            await asyncio.to_thread(self.bus.wait_handled, wanted, entity_type, entity_id,
                                    event_number, timeout)
        else:
            raise ConfigurationError(
                f"wait_for needs an AsyncRedisStorage or a bus that tells how far subscribers "
                f"got (InMemoryEventBus), not {type(self.bus).__name__}"
            )

    async def rebuild(self, subscriber_id: str, *, timeout: float = 60.0,
                      pause_ms: int = 30_000,
                      progress: Callable[[int], None] | None = None) -> int:
        """`Store.rebuild`, awaited: pauses the subscriber, waits for its running handlers,
        starts it over, calls its reset hook (an `async def` one on this event loop), hands
        it the whole history and resumes. It needs the bus of the Store that declares the
        subscriber (`AsyncStore(..., bus=store.bus)`); the blocking steps run in a thread."""
        bus = rebuilding(self.bus)
        hook = check_rebuild(bus, self.entity_types(), self.subscriber_ids, subscriber_id)
        loop = asyncio.get_running_loop()

        def reset() -> None:  # in the rebuilding thread
            if is_async(hook):
                asyncio.run_coroutine_threadsafe(hook(), loop).result()  # type: ignore[arg-type]
            else:
                hook()

        return await asyncio.to_thread(bus.rebuild, subscriber_id, reset, timeout=timeout,
                                       pause_ms=pause_ms, progress=progress)

    async def rotate_keys(self) -> int:
        """`Store.rotate_keys`, awaited: re-wraps every data key with the current master
        key; returns how many."""
        keyring = self._keyring()
        if isinstance(keyring, AsyncKeyring):
            return await keyring.rotate()
        return keyring.rotate()

    def _keyring(self) -> AsyncKeyring | Keyring:
        keyring = self._keyring_or_none()
        if keyring is None:
            raise ConfigurationError(
                "personal data needs a master key: set ES_ENCRYPTION_KEY (`es-workers keys "
                "new` makes one), or pass encryption=MasterKeys(...) to the storage")
        return keyring

    async def forget(self, subject: str) -> int:
        """`Store.forget`, awaited: destroys the subject's data key, then appends the
        `SubjectForgotten` notices missing. Idempotent; returns the keys destroyed so far."""
        keyring = self._keyring()
        if isinstance(keyring, AsyncKeyring):
            destroyed = await keyring.forget(subject)
        else:
            destroyed = keyring.forget(subject)
        while True:
            async with self.open(FORGOTTEN_TYPE, subject) as stream:
                recorded = 0
                async for _ in stream.all():
                    recorded += 1
                try:
                    await stream.write(*missing_notices(subject, recorded, destroyed))
                    return destroyed
                except ConcurrencyError:  # another forget of the subject: count again
                    continue

    def _keyring_or_none(self) -> AsyncKeyring | Keyring | None:
        storage = getattr(self.storage, "storage", self.storage)  # AsyncInMemoryStorage's
        keyring = getattr(self.storage, "keyring", None) or getattr(storage, "keyring", None)
        return keyring if isinstance(keyring, AsyncKeyring | Keyring) else None

    async def close(self) -> None:
        """Closes the storage (its Redis client), and the bus unless it was given (it may be
        a Store's)."""
        await self.storage.close()
        if self._owns_bus:
            self.bus.close()

    async def __aenter__(self) -> Self:
        """Opens the storage first (on Redis: reads its partitions and runs the start-up
        checks `Store(...)` runs when it is built), so that a store that cannot work fails
        here rather than at its first write."""
        if isinstance(self.storage, AsyncOpening):
            await self.storage.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
