"""In-process backends: for tests and single-process apps. Nothing survives the process."""

from .bus import InMemoryEventBus
from .storage import InMemoryStorage

__all__ = ["InMemoryEventBus", "InMemoryStorage"]
