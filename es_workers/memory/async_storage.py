"""AsyncInMemoryStorage: `InMemoryStorage` behind the `AsyncStorage` port, for tests of
async apps. It wraps an `InMemoryStorage` (its own, or one a `Store` also uses: both then
see the same events, and that Store's `start()` relays what either writes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ..event import Content, Event
from ..position import Position
from .storage import InMemoryStorage


class AsyncInMemoryStorage:
    def __init__(self, storage: InMemoryStorage | None = None) -> None:
        self.storage = storage if storage is not None else InMemoryStorage()

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        self.storage.register(entity_type, *content_types)

    def entity_types(self) -> list[str]:
        return self.storage.entity_types()

    async def read(self, entity_type: str, entity_id: str, after: int = 0) -> AsyncIterator[Event]:
        for event in self.storage.read(entity_type, entity_id, after):
            yield event

    async def write(self, entity_type: str, events: Sequence[Event]) -> list[Position]:
        return self.storage.write(entity_type, events)

    async def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        return self.storage.entity_ids(entity_type, after, limit)

    async def close(self) -> None:
        self.storage.close()
