"""The composition root's public face: `Store` and `AsyncStore` as users build them.

Settings describe (`settings`), the connection spec reaches Redis (`connection`), wiring
builds the clients, storages and buses (`wiring`), and this module gives the core classes
(`store.Store`, `async_store.AsyncStore`, which import no backend) what only the root may
know: the in-memory bus a store given no bus uses, and `from_settings`. `es_workers.Store`
and `es_workers.AsyncStore` are these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from . import async_store, store
from .event import Content
from .memory.bus import InMemoryEventBus
from .ports import Bus
from .retention import Retention
from .settings import Settings
from .upgrade import EventUpgrade
from .wiring import build_async_storage, build_parts


class Store(store.Store):
    """The entry point: `Store(storage, bus=..., events={...}, upgrades={...})`, or
    `Store.from_settings(events={...})`.

    `events` maps each entity type to the Content classes it may hold; they are registered
    with the storage at once, so reading and writing work without `start()`. `upgrades`
    maps entity types to upgrades applied, in order, on read and on delivery. `bus`
    defaults to an `InMemoryEventBus`.

    `logger` receives the records of the store and of what it builds and runs: the default
    in-memory bus, the publisher of `start()`, and (`from_settings`) the wiring. Without
    one, each part logs under its own `es_workers.*` name. A bus you pass keeps its own.
    """

    def default_bus(self, logger: logging.Logger | None) -> Bus:
        """The bus of a store given none: an `InMemoryEventBus` (handlers run in this
        process, at `write`), logging through `logger` when given."""
        return InMemoryEventBus(logger=logger)

    @classmethod
    def from_settings(
        cls,
        *,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        settings: Settings | None = None,
        logger: logging.Logger | None = None,
        retention: Mapping[str, Retention] | None = None,
    ) -> Store:
        """A Store on Redis with Dramatiq subscribers, configured by `ES_...` settings
        (see `es_workers.settings`); with no `ES_REDIS_URL`, on an embedded fakeredis."""
        storage, bus = build_parts(settings, logger=logger)
        return cls(storage, bus=bus, events=events, upgrades=upgrades, logger=logger,
                   retention=retention)


class AsyncStore(async_store.AsyncStore):
    """`AsyncStore(storage, bus=..., events={...}, upgrades={...})`, as `Store`, or
    `AsyncStore.from_settings(events={...})`.

    `storage` is an `AsyncRedisStorage` or an `AsyncInMemoryStorage`. Subscribers are not
    run here: they are a `Store`'s, in its worker processes (or its `start()` in memory).
    `bus` (by default an `InMemoryEventBus`) tells `subscriber_ids`. `logger` receives the
    records of what it builds, as `Store`'s.
    """

    def default_bus(self, logger: logging.Logger | None) -> Bus:
        """The bus of a store given none: an `InMemoryEventBus`, which tells no
        subscribers but those subscribed to it (pass a Store's bus to know its)."""
        return InMemoryEventBus(logger=logger)

    @classmethod
    def from_settings(
        cls,
        *,
        events: Mapping[str, Iterable[type[Content]]] | None = None,
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        settings: Settings | None = None,
        bus: Bus | None = None,
        logger: logging.Logger | None = None,
        retention: Mapping[str, Retention] | None = None,
    ) -> AsyncStore:
        """An AsyncStore on the Redis the `ES_...` settings name (as `Store.from_settings`:
        the same connection spec, so the same server, Sentinel primary or cluster, and the
        same options; with no `ES_REDIS_URL`, the embedded fakeredis). It builds no
        Dramatiq broker: pass the workers' `bus` (e.g. `bus=store.bus`) to know their
        subscribers."""
        return cls(build_async_storage(settings, logger=logger), bus=bus, events=events,
                   upgrades=upgrades, logger=logger, retention=retention)
