"""One backoff rule for every retry: exponential, capped, with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """`min_ms` doubled at each attempt up to `max_ms`, then drawn in [80%, 120%] of that
    so that many retrying processes spread out."""

    min_ms: int
    max_ms: int

    def delay_ms(self, attempt: int) -> int:
        """The wait before retry number `attempt` (1 for the first retry)."""
        delay = min(self.max_ms, self.min_ms * 2 ** min(max(0, attempt - 1), 32))
        return int(delay * random.uniform(0.8, 1.2))

    def delay_s(self, attempt: int) -> float:
        return self.delay_ms(attempt) / 1000
