"""AsyncInMemoryStorage: `InMemoryStorage` behind the `AsyncStorage` port, for tests of
async apps. It wraps an `InMemoryStorage` (its own, or one a `Store` also uses: both then
see the same events, and that Store's `start()` relays what either writes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from datetime import datetime

from ..event import Content, Event
from ..position import Position
from ..snapshot import StoredSnapshot
from ..upgrade import AsyncStoredEvents, Deletion, StoredEvents
from .storage import InMemoryStorage


class AsyncInMemoryStorage:
    def __init__(self, storage: InMemoryStorage | None = None) -> None:
        self.storage = storage if storage is not None else InMemoryStorage()

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        self.storage.register(entity_type, *content_types)

    def entity_types(self) -> list[str]:
        return self.storage.entity_types()

    def read(self, entity_type: str, entity_id: str, after: int = 0) -> AsyncIterator[Event]:
        """`InMemoryStorage.read`, awaited."""
        stored = self.storage.read(entity_type, entity_id, after)
        deletion = stored.deletion if isinstance(stored, StoredEvents) else Deletion()
        return AsyncStoredEvents(_events(stored), deletion)

    async def write(self, entity_type: str, events: Sequence[Event]) -> list[Position]:
        return self.storage.write(entity_type, events)

    async def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        return self.storage.entity_ids(entity_type, after, limit)

    async def truncate_before(self, entity_type: str, entity_id: str, event_number: int) -> int:
        """Marks the entity's events before `event_number` as removable (the scavenger removes
        them); returns the first kept event number."""
        return self.storage.truncate_before(entity_type, entity_id, event_number)

    async def tombstone(self, entity_type: str, entity_id: str) -> int:
        """Deletes the entity for good: reads and later writes raise StreamDeletedError."""
        return self.storage.tombstone(entity_type, entity_id)

    async def delete(self, entity_type: str, entity_id: str) -> int:
        """The entity reads as empty until written again (`InMemoryStorage.delete`)."""
        return self.storage.delete(entity_type, entity_id)

    async def save_snapshot(self, entity_type: str, entity_id: str,
                            snapshot: StoredSnapshot) -> None:
        """Stores the entity's state after the snapshot's event number (`Store.save_snapshot`)."""
        self.storage.save_snapshot(entity_type, entity_id, snapshot)

    async def load_snapshot(self, entity_type: str, entity_id: str,
                            name: str) -> tuple[StoredSnapshot, datetime] | None:
        """The newest snapshot stored under `name`, with its event's time, or None."""
        return self.storage.load_snapshot(entity_type, entity_id, name)

    # -- the log: the wrapped storage's --------------------------------------------------

    async def partitions_count(self) -> int:
        return self.storage.partitions

    async def read_log(self, partition: int, after: int = 0,
                       entity_types: Collection[str] | None = None) -> AsyncIterator[Event]:
        for event in self.storage.read_log(partition, after, entity_types):
            yield event

    async def log_entry(self, position: Position) -> tuple[str, str, int] | None:
        return self.storage.log_entry(position)

    async def wait_log(self, after: Mapping[int, int], timeout: float) -> None:
        await asyncio.to_thread(self.storage.wait_log, after, timeout)

    async def followed(self, name: str) -> dict[int, int]:
        return self.storage.followed(name)

    async def record_followed(self, name: str, done: Mapping[int, int]) -> None:
        self.storage.record_followed(name, done)

    async def close(self) -> None:
        self.storage.close()


async def _events(events: Iterator[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event
