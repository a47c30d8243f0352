"""Content (what happened, defined by the application) and Event (content plus metadata)."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeAlias, runtime_checkable

from pydantic import BaseModel, ConfigDict

from .personal import is_forgotten, personal_fields
from .position import Position


class Content(BaseModel):
    """The application's data of one event. Subclass it per kind of event.

    The event name stored with the data is the class variable `event_name`, by default the
    class name. Renaming a class therefore needs `event_name` set to the old name, or an
    upgrade.
    """

    # NaN and infinities are refused at write (codec.content_json finds them by these
    # constants; pydantic's default would write null silently); events stored with them
    # before that still read back, as reading accepts the constants.
    model_config = ConfigDict(ser_json_inf_nan="constants")

    event_name: ClassVar[str]
    personal_subject: ClassVar[str | None] = None
    """The field holding the ID of the person the class's `Personal` fields are about
    (see `es_workers.personal`); None: the event's entity ID."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_name" not in cls.__dict__:
            cls.event_name = cls.__name__

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__pydantic_complete__:  # else (forward references) on first use
            personal_fields(cls)  # a class that cannot be forgotten fails where it is defined


NO_METADATA: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    """One business event of one entity, as stored.

    `event_number` is 1-based and gap-free within an entity. `store_event_id` is a UUIDv7
    assigned at write time; `store_entity_id` is the `store_event_id` of the entity's first
    event, so entities sort by creation time. `metadata` is a read-only mapping of str to
    str, empty when none was stored (see `es_workers.metadata`). `position` is the event's
    place in its partition's log (the order of commits; see `Position`), None for an event
    not stored yet or stored before the log existed.
    """

    entity_id: str
    entity_type: str
    event_number: int
    event_time: datetime
    content: Content
    store_event_id: str
    store_entity_id: str
    metadata: Mapping[str, str] = field(default_factory=lambda: NO_METADATA)
    position: Position | None = None

    @property
    def correlation_id(self) -> str:
        """The stored `correlation_id`, else this event's own `store_event_id`: the first
        event of a chain correlates the ones it caused."""
        return self.metadata.get("correlation_id") or self.store_event_id

    @property
    def causation_id(self) -> str | None:
        """The `store_event_id` of the event being handled when this one was written."""
        return self.metadata.get("causation_id")

    @property
    def forgotten(self) -> bool:
        """Whether the content's `Personal` fields hold placeholders: its subject was
        forgotten (see `es_workers.personal`)."""
        return is_forgotten(self.content)


class _Unfrozen:
    """Event's slots without its frozen `__setattr__`: `stored_event` fills one with plain
    attribute stores (a quarter of the cost of setting a frozen dataclass' slots through
    their descriptors, which was a third of hydrating), then makes it an Event."""

    __slots__ = ("content", "entity_id", "entity_type", "event_number", "event_time",
                 "metadata", "position", "store_entity_id", "store_event_id")

    def __init__(self, entity_id: str, entity_type: str, event_number: int,
                 event_time: datetime, content: Content, store_event_id: str,
                 store_entity_id: str, metadata: Mapping[str, str],
                 position: Position | None) -> None:
        self.entity_id = entity_id
        self.entity_type = entity_type
        self.event_number = event_number
        self.event_time = event_time
        self.content = content
        self.store_event_id = store_event_id
        self.store_entity_id = store_entity_id
        self.metadata = metadata
        self.position = position


if sorted(_Unfrozen.__slots__) != sorted(f.name for f in fields(Event)):  # pragma: no cover
    raise AssertionError("_Unfrozen.__slots__ must list Event's fields")


def stored_event(entity_id: str, entity_type: str, event_number: int, event_time: datetime,
                 content: Content, store_event_id: str, store_entity_id: str,
                 metadata: Mapping[str, str], position: Position | None = None) -> Event:
    """`Event(...)` for a storage decoding what it stored, about twice as fast: the same
    slots filled without the frozen dataclass' `__init__`, then given the Event class
    (the two classes have the same layout, so Python allows it)."""
    event = _Unfrozen(entity_id, entity_type, event_number, event_time, content,
                      store_event_id, store_entity_id, metadata, position)
    event.__class__ = Event  # type: ignore[assignment]
    return event  # type: ignore[return-value]


def own_copy(event: Event) -> Event:
    """The event with a content of its own, sharing nothing with the original: read back
    from its JSON, as each subscriber on a Dramatiq bus reads its own from storage (about
    the cost of decoding it again). A bus hands one to each subscriber, so that a handler
    that changes its content changes nothing another sees (contents are not frozen: users'
    classes may set fields, in validators too)."""
    content = event.content
    try:
        copied = content.__class__.model_validate_json(
            content.__pydantic_serializer__.to_json(content))
    except ValueError:  # content an upgrade made that does not read back from JSON
        copied = copy.deepcopy(content)
    return stored_event(event.entity_id, event.entity_type, event.event_number,
                        event.event_time, copied, event.store_event_id, event.store_entity_id,
                        event.metadata)


@runtime_checkable
class HandlerObject(Protocol):
    def handle(self, event: Event) -> None: ...


Handler: TypeAlias = Callable[[Event], Any] | HandlerObject


def as_callable(handler: Handler) -> Callable[[Event], Any]:
    """Turns a handler (callable, or object with `.handle`) into a callable."""
    if isinstance(handler, HandlerObject):
        return handler.handle
    if callable(handler):
        return handler
    raise TypeError(f"a handler must be callable or have .handle(event), got {handler!r}")


def is_async(function: Callable[..., Any]) -> bool:
    """Whether calling `function` makes a coroutine: an `async def` function or method, or
    an object whose `__call__` is one."""
    call = function if inspect.isroutine(function) else type(function).__call__
    return inspect.iscoroutinefunction(call)


async def awaited_in(
    context: contextvars.Context, handler: Callable[[Event], Any], event: Event
) -> Any:
    """Awaits `handler(event)` as a task run in `context`: a bus that hands an event to an
    async handler on another thread's event loop passes the context of the thread that
    delivers it, so context variables set around the call reach the handler."""
    return await asyncio.get_running_loop().create_task(handler(event), context=context)
