"""InMemoryEventBus: synchronous delivery in the calling thread, as in the Go library."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import SubscriberError
from ..event import Event, Handler, as_callable, check_entity_type
from .names import check_subscriber_id


class InMemoryEventBus:
    """Calls each subscriber's handler for each event; stops at the first handler error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, dict[str, Callable[[Event], Any]]] = {}

    def subscribe(self, entity_type: str, subscriber_id: str, handler: Handler) -> None:
        check_entity_type(entity_type)
        check_subscriber_id(subscriber_id)
        function = as_callable(handler)
        with self._lock:
            handlers = self._handlers.setdefault(entity_type, {})
            if subscriber_id in handlers:
                raise SubscriberError(
                    f"subscriber {subscriber_id!r} is already registered for {entity_type!r}"
                )
            handlers[subscriber_id] = function

    def subscriber_ids(self, entity_type: str) -> list[str]:
        with self._lock:
            return list(self._handlers.get(entity_type, {}))

    def write(self, entity_type: str, events: Iterable[Event]) -> None:
        self.write_to(entity_type, events, self.subscriber_ids(entity_type))

    def write_to(
        self, entity_type: str, events: Iterable[Event], subscriber_ids: Sequence[str]
    ) -> None:
        with self._lock:
            known = self._handlers.get(entity_type, {})
            handlers = [known[s] for s in subscriber_ids if s in known]
        for event in events:
            for handler in handlers:
                handler(event)

    def close(self) -> None:
        pass
