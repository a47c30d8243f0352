"""What an append waits for before it returns (the start-up checks that the server can
give it are in `opening.py`).

By default an append returns once the primary ran the script (and, with `appendfsync
always`, wrote it to its append-only file). `Durability(replicas=N)` also sends `WAIT N
timeout` on the same connection, right after the script in one pipeline: the append returns
once N replicas have it, else raises DurabilityError. `aof=True` sends `WAITAOF` instead,
which Redis has from 7.2 on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DurabilityError


@dataclass(frozen=True)
class Durability:
    """`replicas`: replicas that must confirm each append; `timeout_ms`: how long to wait
    for them; `aof`: also wait for the primary's (and those replicas') append-only file."""

    replicas: int = 0
    timeout_ms: int = 1000
    aof: bool = False

    @property
    def waits(self) -> bool:
        return self.replicas > 0 or self.aof

    def command(self) -> tuple[Any, ...]:
        """The command sent after each append, on its connection."""
        if self.aof:
            return ("WAITAOF", 1, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, answer: Any, entity_type: str, entity_id: str, first: int,
              last: int) -> None:
        """Raises DurabilityError when the answer to `command()` confirms too little."""
        if self.aof:
            local, replicas = (int(n) for n in answer)
            if local < 1:
                raise DurabilityError(entity_type, entity_id, first, last, wanted=1,
                                      confirmed=local, what="append-only file fsyncs")
        else:
            replicas = int(answer)
        if replicas < self.replicas:
            raise DurabilityError(entity_type, entity_id, first, last,
                                  wanted=self.replicas, confirmed=replicas)
