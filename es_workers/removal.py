"""The record of deleted and tombstoned entities as events: `store.delete(type, id)` and
`store.tombstone(type, id)` append an `EntityDeleted` / `EntityTombstoned` to the entity
`REMOVED_TYPE` / <the entity type> once the storage has recorded the removal.

Subscribers learn of removals as of any event, in order per entity type, at least once, and
a subscriber added later is handed the past ones: `@store.subscribe(REMOVED_TYPE,
"orders-view")` lets a read model drop its rows of a deleted order. `es-workers status`
counts them per entity type (the notice entity's head). The notices are never removed with
the entity they name: give `REMOVED_TYPE` a `Retention` to bound them.

The removal comes first, then the notice (a second step, not atomic with it): a delete
interrupted between the two, run again, records it then; a tombstone run again does nothing
more, so its notice can be lost to a crash at that instant.
"""

from __future__ import annotations

from typing import ClassVar

from .event import Content

REMOVED_TYPE = "es.removed"
"""The entity type of removal notices; the entity ID is the type of the removed entity."""


class EntityDeleted(Content):
    """`store.delete`: the entity's events up to `event_number` read as gone; a later write
    starts it again after them."""

    entity_type: ClassVar[str] = REMOVED_TYPE
    entity_id: str
    event_number: int


class EntityTombstoned(Content):
    """`store.tombstone`: the entity is gone for good (its last event was `event_number`)."""

    entity_type: ClassVar[str] = REMOVED_TYPE
    entity_id: str
    event_number: int


REMOVAL_NOTICES: tuple[type[Content], ...] = (EntityDeleted, EntityTombstoned)


def notice(entity_id: str, head: int, *, tombstone: bool) -> Content:
    """The notice of a removal of the entity whose last event was `head`."""
    kind = EntityTombstoned if tombstone else EntityDeleted
    return kind(entity_id=entity_id, event_number=head)
