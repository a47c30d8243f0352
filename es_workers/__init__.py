"""es_workers: event sourcing on Redis Streams, with Dramatiq workers as subscribers."""

from __future__ import annotations

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
from .memory import InMemoryEventBus, InMemoryStorage
from .ports import EventBus, NotifyingEventBus, Storage
from .redis import RedisStorage
from .settings import Settings
from .store import Store
from .stream import Stream
from .upgrade import EventUpgrade
from .workers import DramatiqEventBus

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
    "Settings",
    "Storage",
    "Store",
    "Stream",
    "StreamNotReadError",
    "SubscriberError",
    "UnknownEventError",
]
