from .base import Storage
from .memory import InMemoryStorage
from .redis import RedisStorage

__all__ = ["InMemoryStorage", "RedisStorage", "Storage"]
