from .base import EventBus, NotifyingEventBus
from .memory import InMemoryEventBus

__all__ = ["EventBus", "InMemoryEventBus", "NotifyingEventBus"]
