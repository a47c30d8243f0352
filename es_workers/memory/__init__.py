"""In-process backends: for tests and single-process apps. Nothing survives the process."""

from .async_storage import AsyncInMemoryStorage
from .bus import InMemoryEventBus
from .storage import InMemoryStorage

__all__ = ["AsyncInMemoryStorage", "InMemoryEventBus", "InMemoryStorage"]
