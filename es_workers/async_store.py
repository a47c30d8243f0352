"""AsyncStore: `Store` for asyncio apps (FastAPI, Starlette, ...). It opens, reads and
appends entity streams without blocking the event loop; the events it appends are relayed
and handled like any other (`es-workers publish` / `worker` on a `Store` of the same data).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import overload

from .async_stream import AsyncStream
from .commit_log import AsyncFollower, AsyncLogReading, async_log_storage, async_read_all
from .errors import ConfigurationError
from .event import Content, Handler
from .memory.bus import InMemoryEventBus
from .names import subscribers_to_wait_for
from .ports import AsyncStorage, Bus, Progress
from .position import After, Position
from .redis.async_storage import AsyncRedisStorage
from .settings import Settings
from .stream import check_stream
from .upgrade import AsyncReader, AsyncReading, EventUpgrade, check_upgrades
from .wiring import build_async_storage


class AsyncStore:
    """`AsyncStore(storage, bus=..., events={...}, upgrades={...})`, as `Store`.

    `storage` is an `AsyncRedisStorage` or an `AsyncInMemoryStorage`. Subscribers are not
    run here: they are a `Store`'s, in its worker processes (or its `start()` in memory).
    `bus` (by default an `InMemoryEventBus`) tells `subscriber_ids`.
    """

    def __init__(
        self,
        storage: AsyncStorage,
        *,
        bus: Bus | None = None,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.storage = storage
        self.bus: Bus = bus if bus is not None else InMemoryEventBus()
        self._owns_bus = bus is None
        self.log = logger or logging.getLogger("es_workers")
        for entity_type, content_types in (events or {}).items():
            storage.register(entity_type, *content_types)
        check_upgrades(upgrades or {})
        self.reader = AsyncReader(storage.read, upgrades or {})

    @classmethod
    def from_settings(
        cls,
        *,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        settings: Settings | None = None,
        bus: Bus | None = None,
    ) -> AsyncStore:
        """An AsyncStore on the Redis the `ES_...` settings name (as `Store.from_settings`;
        with no `ES_REDIS_URL`, the embedded fakeredis). It builds no Dramatiq broker: pass
        the workers' `bus` (e.g. `bus=store.bus`) to know their subscribers."""
        return cls(build_async_storage(settings), bus=bus, events=events, upgrades=upgrades)

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
        if isinstance(self.storage, AsyncRedisStorage):
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

    async def close(self) -> None:
        """Closes the storage (its Redis client), and the bus unless it was given (it may be
        a Store's)."""
        await self.storage.close()
        if self._owns_bus:
            self.bus.close()

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
