"""The Storage protocol: where entity streams are kept."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..event import Content, Event

if TYPE_CHECKING:
    from ..bus.base import EventBus


@runtime_checkable
class Storage(Protocol):
    def read(self, entity_type: str, entity_id: str, after: int = 0) -> Iterator[Event]:
        """Events of one entity with `event_number > after`, in order."""
        ...

    def write(self, entity_type: str, events: Sequence[Event]) -> None:
        """Appends events of one entity, all or none.

        `events[0].event_number - 1` is the expected position: if the entity is elsewhere,
        `ConcurrencyError`. Writing the same events again (same `store_event_id`s) at the
        same numbers succeeds without storing them twice.
        """
        ...

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        """Declares the Content classes the entity type may hold; writes of others fail."""
        ...

    def entity_types(self) -> list[str]:
        """The entity types registered so far."""
        ...

    def entity_ids(
        self, entity_type: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of entity IDs ordered by `store_entity_id`, and the token of the next page
        (None on the last page). Pass the token as `after`."""
        ...

    def start_publish(self, bus: EventBus, stop: threading.Event) -> None:
        """Relays newly written events to the bus until `stop` is set (blocking)."""
        ...

    def close(self) -> None: ...
