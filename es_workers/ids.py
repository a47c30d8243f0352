"""Store IDs: UUIDv7 strings, time-ordered and strictly increasing within a process.

`store_event_id` and `store_entity_id` sort entities by creation (entity_ids pages in that
order), so IDs made later must sort later. RFC 9562 (method 1): 48 bits of Unix
milliseconds, then a 12-bit counter within the millisecond, then 60 random bits. Up to
4,096 IDs per millisecond keep the clock's time (uuid6.uuid7 moves its timestamp 1 ms
ahead per ID when called faster than that, and drifts ahead of the clock under load); past
that the counter carries into the timestamp until the clock catches up.
"""

from __future__ import annotations

import os
import random
import threading
import time

_lock = threading.Lock()
# Its own generator, seeded from os.urandom at import and again in a forked child, so that
# processes never share a sequence (not even when an application seeds `random`).
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)
_last = 0  # (unix milliseconds << 12) | counter, of the last ID made


def new_ids(count: int) -> list[str]:
    """`count` new UUIDv7 strings, each greater than every one made before in this process."""
    global _last
    now = time.time_ns() // 1_000_000 << 12
    with _lock:
        first = max(now, _last + 1)
        _last = first + count - 1
    noise = _random.randbytes(8 * count).hex()
    ids = []
    last_ms = -1
    for offset in range(count):
        stamp = first + offset
        if stamp >> 12 != last_ms:  # the IDs of one call mostly share their millisecond
            last_ms = stamp >> 12
            ms = f"{last_ms:012x}"
            head = f"{ms[:8]}-{ms[8:]}-7"
        random_hex = noise[16 * offset : 16 * offset + 15]
        # 48 bits of unix ms, version 7, 12-bit counter, variant 0b10, 60 random bits
        ids.append(f"{head}{stamp & 0xFFF:03x}-8{random_hex[:3]}-{random_hex[3:]}")
    return ids
