"""Process heartbeats: the publisher and each worker process say "alive" under the store's
prefix, and `es-workers health` reads them. This module alone names the heartbeat key.

One hash `<prefix>:heartbeats`: field `<role>:<host>:<pid>`, value the time of the last
beat in ms since the epoch. A process removes its field when it stops cleanly; a killed
one's field goes stale and is dropped by the next beat of any process once it is older
than FORGET_AFTER_MS (a restarted container keeps its host name, not its PID).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..ports import BEAT_EVERY_S
from .keys import RedisKeys, text

__all__ = ["BEAT_EVERY_S", "FORGET_AFTER_MS", "Beat", "Heartbeats"]

FORGET_AFTER_MS = 3_600_000


@dataclass(frozen=True)
class Beat:
    role: str  # "publisher" or "worker"
    host: str
    pid: int
    at_ms: int

    def age_s(self, now_ms: int | None = None) -> float:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0, now - self.at_ms) / 1000


class Heartbeats:
    """Writes this process's beat (as `role`) and reads everyone's; redis-py's errors (the
    workers get it translated: `RedisStorage.process_heartbeats()`). The worker processes
    beat from `workers.middleware.BeatingThread`."""

    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self.client = client
        self.key = f"{keys.prefix}:heartbeats"
        self.host = socket.gethostname()

    def _field(self, role: str) -> str:
        return f"{role}:{self.host}:{os.getpid()}"

    def beat(self, role: str) -> None:
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, self._field(role), now_ms)
        stale = [b for b in self.read() if now_ms - b.at_ms > FORGET_AFTER_MS]
        for old in stale:
            pipe.hdel(self.key, f"{old.role}:{old.host}:{old.pid}")
        pipe.execute()

    def stop(self, role: str) -> None:
        """Removes this process's beat: it stopped on purpose."""
        self.client.hdel(self.key, self._field(role))

    def read(self) -> list[Beat]:
        beats = []
        for field, value in self.client.hgetall(self.key).items():
            role, _, rest = text(field).partition(":")
            host, _, pid = rest.rpartition(":")
            if pid.isdigit() and text(value).isdigit():
                beats.append(Beat(role, host, int(pid), int(text(value))))
        return sorted(beats, key=lambda b: (b.role, b.host, b.pid))

