"""The Redis backend: entity streams and outbox (`storage`, `append.lua`), the outbox relay
(`publisher`), subscriber state (`state`, `begin/checkpoint/unlock.lua`), key names
(`keys`) and the script loader (`scripts`)."""

from .publisher import Publisher, PublisherOptions
from .state import ParkedEntity, SubscriberState
from .storage import RedisStorage

__all__ = ["ParkedEntity", "Publisher", "PublisherOptions", "RedisStorage", "SubscriberState"]
