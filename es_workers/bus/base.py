"""The EventBus protocol: hands stored events to the subscribers of their entity type."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..event import Event, Handler

if TYPE_CHECKING:
    from ..store import Store


@runtime_checkable
class EventBus(Protocol):
    def write(self, entity_type: str, events: Iterable[Event]) -> None:
        """Delivers the events to every subscriber of the entity type."""
        ...

    def write_to(
        self, entity_type: str, events: Iterable[Event], subscriber_ids: Sequence[str]
    ) -> None:
        """Delivers the events to the named subscribers only."""
        ...

    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler) -> None: ...

    def subscriber_ids(self, entity_type: str) -> list[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class NotifyingEventBus(EventBus, Protocol):
    """A bus whose subscribers read the events themselves from storage.

    The publisher then only says "entity X has events up to N" (`notify`), and each
    subscriber reads what it has not handled yet: that keeps order per entity and skips
    duplicates whatever order the notices arrive in.
    """

    def bind(self, store: Store) -> None:
        """Called by the Store it is given to: subscribers read through that store."""
        ...

    def notify(
        self,
        entity_type: str,
        entity_id: str,
        event_number: int | None,
        subscriber_ids: Sequence[str] | None = None,
    ) -> None:
        """Tells subscribers (all of the type when None) that the entity has events up to
        `event_number` (None: up to its head)."""
        ...
