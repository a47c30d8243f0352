"""es_workers: event sourcing on Redis Streams, with Dramatiq workers as subscribers."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from .async_store import AsyncStore
from .async_stream import AsyncStream
from .errors import (
    ConcurrencyError,
    ConfigurationError,
    CorruptEventError,
    DecodeError,
    DurabilityError,
    EsError,
    EventTooLargeError,
    InvalidContentError,
    InvalidMetadataError,
    InvalidNameError,
    InvalidPayloadError,
    NotParkedError,
    NotRegisteredError,
    ParkedError,
    StorageFullError,
    StorageUnavailableError,
    StreamNotReadError,
    SubscriberError,
    TruncatedError,
    UnknownEventError,
    UnknownNameError,
    WaitTimeoutError,
)
from .event import Content, Event, Handler
from .memory import AsyncInMemoryStorage, InMemoryEventBus, InMemoryStorage
from .ports import AsyncStorage, EventBus, NotifyingEventBus, Storage
from .position import Position
from .redis import AsyncRedisStorage, RedisStorage
from .settings import Settings
from .store import Store
from .stream import Stream
from .upgrade import EventUpgrade
from .workers import DramatiqEventBus

try:
    __version__ = _distribution_version("es_workers")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

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
    "DurabilityError",
    "EsError",
    "Event",
    "EventBus",
    "EventTooLargeError",
    "EventUpgrade",
    "Handler",
    "InMemoryEventBus",
    "InMemoryStorage",
    "InvalidContentError",
    "InvalidMetadataError",
    "InvalidNameError",
    "InvalidPayloadError",
    "NotParkedError",
    "NotRegisteredError",
    "NotifyingEventBus",
    "ParkedError",
    "Position",
    "RedisStorage",
    "Settings",
    "Storage",
    "StorageFullError",
    "StorageUnavailableError",
    "Store",
    "Stream",
    "StreamNotReadError",
    "SubscriberError",
    "TruncatedError",
    "UnknownEventError",
    "UnknownNameError",
    "WaitTimeoutError",
]
