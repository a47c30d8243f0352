"""es_workers: event sourcing on Redis Streams, with Dramatiq workers as subscribers."""

from __future__ import annotations

from .async_store import AsyncStore
from .async_stream import AsyncStream
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
from .memory import AsyncInMemoryStorage, InMemoryEventBus, InMemoryStorage
from .ports import AsyncStorage, EventBus, NotifyingEventBus, Storage
from .redis import AsyncRedisStorage, RedisStorage
from .settings import Settings
from .store import Store
from .stream import Stream
from .upgrade import EventUpgrade
from .workers import DramatiqEventBus

__all__ = [
    "AsyncInMemoryStorage",
    "AsyncRedisStorage",
    "AsyncStorage",
    "AsyncStore",
    "AsyncStream",
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
