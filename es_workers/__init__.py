"""es_workers: event sourcing as a persistence layer, on Redis Streams, with Dramatiq workers
as subscribers.

An app keeps its state as events. It declares the events of each entity type as pydantic
models (`Content`), opens an entity's stream, reads it to rebuild the state, and writes new
events; a write is optimistic and atomic (`ConcurrencyError` when another writer came
first)::

    from es_workers import Content, Store

    class Deposited(Content):
        amount: int

    store = Store.from_settings(events={"account": [Deposited]})
    with store.open("account", "alice") as stream:
        balance = sum(event.content.amount for event in stream.all())
        stream.write(Deposited(amount=10))

Subscribers react to the events of an entity type in background workers, in order per
entity, at least once::

    @store.subscribe("account", "balances")
    def update_balance(event): ...

A publisher process (`es-workers publish APP`) relays new events, and worker processes
(`es-workers worker APP`) run the subscribers; `es-workers status APP` shows how far each
subscriber is. `AsyncStore` is the asyncio face of `Store`. Without `ES_REDIS_URL`
everything runs on an embedded Redis, for trying things out (`es-workers demo`).

The README and the docs/ folder describe settings, deployment, guarantees and failures.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names are imported when first used (PEP 562), not with the package: every
# module of es_workers imports this package first, and `es-workers --version` or `--help`
# would otherwise load Redis, Dramatiq and pydantic-settings (about a second) to print a
# line. The imports below are for type checkers and readers only; no cycle hides here.
if TYPE_CHECKING:
    __version__: str

    from .app import AsyncStore, Store
    from .async_stream import AsyncStream
    from .encryption import EncryptionError, MasterKeys
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
        RebuildError,
        StorageFullError,
        StorageUnavailableError,
        StreamDeletedError,
        StreamNotReadError,
        SubscriberError,
        TruncatedError,
        UnknownEventError,
        UnknownNameError,
        WaitTimeoutError,
    )
    from .event import Content, Event, Handler
    from .forgetting import SubjectForgotten
    from .memory import AsyncInMemoryStorage, InMemoryEventBus, InMemoryStorage
    from .personal import Personal
    from .ports import AsyncStorage, EventBus, NotifyingEventBus, Storage
    from .position import Position
    from .redis import AsyncRedisStorage, RedisStorage
    from .retention import Retention
    from .settings import Settings
    from .snapshot import Snapshot, SnapshotError
    from .stream import Stream
    from .upgrade import EventUpgrade
    from .workers import DramatiqEventBus

_SOURCES = {  # public name: the module that defines it
    "AsyncInMemoryStorage": ".memory",
    "AsyncRedisStorage": ".redis",
    "AsyncStorage": ".ports",
    "AsyncStore": ".app",
    "AsyncStream": ".async_stream",
    "ConcurrencyError": ".errors",
    "ConfigurationError": ".errors",
    "Content": ".event",
    "CorruptEventError": ".errors",
    "DecodeError": ".errors",
    "DramatiqEventBus": ".workers",
    "DurabilityError": ".errors",
    "EncryptionError": ".encryption",
    "EsError": ".errors",
    "Event": ".event",
    "EventBus": ".ports",
    "EventTooLargeError": ".errors",
    "EventUpgrade": ".upgrade",
    "Handler": ".event",
    "InMemoryEventBus": ".memory",
    "InMemoryStorage": ".memory",
    "InvalidContentError": ".errors",
    "InvalidMetadataError": ".errors",
    "InvalidNameError": ".errors",
    "InvalidPayloadError": ".errors",
    "MasterKeys": ".encryption",
    "NotParkedError": ".errors",
    "NotRegisteredError": ".errors",
    "NotifyingEventBus": ".ports",
    "ParkedError": ".errors",
    "Personal": ".personal",
    "Position": ".position",
    "RebuildError": ".errors",
    "RedisStorage": ".redis",
    "Retention": ".retention",
    "Settings": ".settings",
    "Snapshot": ".snapshot",
    "SnapshotError": ".snapshot",
    "Storage": ".ports",
    "StorageFullError": ".errors",
    "StorageUnavailableError": ".errors",
    "StreamDeletedError": ".errors",
    "Store": ".app",
    "Stream": ".stream",
    "StreamNotReadError": ".errors",
    "SubjectForgotten": ".forgetting",
    "SubscriberError": ".errors",
    "TruncatedError": ".errors",
    "UnknownEventError": ".errors",
    "UnknownNameError": ".errors",
    "WaitTimeoutError": ".errors",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES, "__version__"])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("es_workers")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


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
    "EncryptionError",
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
    "MasterKeys",
    "NotParkedError",
    "NotRegisteredError",
    "NotifyingEventBus",
    "ParkedError",
    "Personal",
    "Position",
    "RebuildError",
    "RedisStorage",
    "Retention",
    "Settings",
    "Snapshot",
    "SnapshotError",
    "Storage",
    "StorageFullError",
    "StorageUnavailableError",
    "Store",
    "Stream",
    "StreamDeletedError",
    "StreamNotReadError",
    "SubjectForgotten",
    "SubscriberError",
    "TruncatedError",
    "UnknownEventError",
    "UnknownNameError",
    "WaitTimeoutError",
]
