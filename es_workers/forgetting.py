"""The record of forgotten subjects as events: `store.forget(subject)` appends a
`SubjectForgotten` to the entity `FORGOTTEN_TYPE` / subject once per data key it destroyed.

Subscribers learn of a forget as of any event, in order, at least once, and a subscriber
added later is handed every past forget: `@store.subscribe(FORGOTTEN_TYPE, "orders-view")`
lets a read model drop what it copied of the subject.

A forget destroys the key first, then appends the notices that are missing (as many as keys
destroyed, from the key store's count): a forget interrupted between the two steps, run
again, appends them then, and a forget run twice appends nothing more.
"""

from __future__ import annotations

from typing import ClassVar

from .event import Content

FORGOTTEN_TYPE = "es.forgotten"
"""The entity type of forget notices; the entity ID is the subject."""


class SubjectForgotten(Content):
    """A subject's data key was destroyed: its `Personal` fields read as placeholders."""

    entity_type: ClassVar[str] = FORGOTTEN_TYPE
    subject: str


def missing_notices(subject: str, recorded: int, destroyed: int) -> list[SubjectForgotten]:
    """The notices to append when `recorded` exist and `destroyed` keys were destroyed."""
    return [SubjectForgotten(subject=subject) for _ in range(destroyed - recorded)]
