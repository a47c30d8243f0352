"""The Redis backend: entity streams and outbox (`storage`, `append.lua`), the same streams
for asyncio (`async_storage`; both encode and decode through `entries`), the outbox relay
(`publisher`), subscriber state (`state`, `begin/checkpoint/unlock.lua`), key names
(`keys`) and the script loader (`scripts`)."""

from .async_storage import AsyncRedisStorage
from .publisher import Publisher, PublisherOptions
from .state import ParkedEntity, SubscriberState
from .storage import RedisStorage

__all__ = [
    "AsyncRedisStorage",
    "ParkedEntity",
    "Publisher",
    "PublisherOptions",
    "RedisStorage",
    "SubscriberState",
]
