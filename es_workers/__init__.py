"""es_workers: event sourcing on Redis Streams, with Dramatiq workers as subscribers."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import TYPE_CHECKING, Any

from .bus import EventBus, InMemoryEventBus, NotifyingEventBus
from .errors import (
    ConcurrencyError,
    ConfigurationError,
    CorruptEventError,
    DecodeError,
    EsError,
    InvalidNameError,
    InvalidPayloadError,
    NotParkedError,
    NotRegisteredError,
    StreamNotReadError,
    SubscriberError,
    UnknownEventError,
)
from .event import Content, Event, Handler
from .storage import InMemoryStorage, RedisStorage, Storage
from .store import Store
from .stream import Stream
from .upgrade import EventUpgrade

if TYPE_CHECKING:
    from .bus.dramatiq import DramatiqEventBus

try:
    __version__ = _distribution_version("es_workers")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ConcurrencyError",
    "ConfigurationError",
    "Content",
    "CorruptEventError",
    "DecodeError",
    "DramatiqEventBus",
    "EsError",
    "Event",
    "EventBus",
    "EventUpgrade",
    "Handler",
    "InMemoryEventBus",
    "InMemoryStorage",
    "InvalidNameError",
    "InvalidPayloadError",
    "NotParkedError",
    "NotRegisteredError",
    "NotifyingEventBus",
    "RedisStorage",
    "Storage",
    "Store",
    "Stream",
    "StreamNotReadError",
    "SubscriberError",
    "UnknownEventError",
]


def __getattr__(name: str) -> Any:
    # Dramatiq is imported only by apps that use it: importing it sets up a global broker.
    if name == "DramatiqEventBus":
        from .bus.dramatiq import DramatiqEventBus

        return DramatiqEventBus
    raise AttributeError(f"module 'es_workers' has no attribute {name!r}")
