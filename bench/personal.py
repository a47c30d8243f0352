"""The cost of personal fields: appending and hydrating events with two `Personal` fields
against the same events without, measured in the same run on the same Redis.

    python bench/personal.py [--redis-url URL] [--n 3000] [--rounds 5]

Figures are ratios (personal / plain), so they compare across machines:

A   single-event `stream.write` time per event, two personal fields / none.  Goal <= 1.3
A10 the same, 10 events per write.                                           Goal <= 1.3
H   time to hydrate a 1,000-event entity through `store.project`, two personal fields /
    none (data keys cached, as in a process that read the subject before).   Goal <= 1.3
H0  the same with an empty data-key cache (a process that never read the subject).

The events are the same shape (~200 bytes of JSON, two of its text fields personal in the
second class). Appends alternate plain and personal in blocks of 300 events, hydrating
alternates per entity, so that both sides see the same load; each figure is the median
over --rounds rounds of that round's ratio (its range beside it), the times medians too.
The bench writes under a key prefix of its own and deletes it at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from es_workers import Content, MasterKeys, Personal, RedisStorage, Store
from es_workers.encryption import new_master_key


class Plain(Content):
    name: str
    email: str
    amount: int
    note: str


class WithPersonal(Content):
    name: Annotated[str, Personal]
    email: Annotated[str, Personal]
    amount: int
    note: str


CHUNK = 300
"""Events appended plain, then personal, in turn (~30 ms each for single-event writes)."""


def content(cls: type[Plain] | type[WithPersonal], number: int) -> Content:
    return cls(name=f"Ada Lovelace {number}", email=f"ada{number}@example.org",
               amount=number, note="n" * 120)


def append_time(store: Store, entity: str, cls: type[Plain] | type[WithPersonal], n: int,
                batch: int) -> float:
    """Seconds per event appending n events, `batch` per write, to a new entity."""
    with store.open(entity.split("/")[0], entity.split("/")[1]) as stream:
        started = time.perf_counter()
        for first in range(0, n, batch):
            stream.write(*(content(cls, first + i) for i in range(batch)))
        return (time.perf_counter() - started) / n


def append_times(store: Store, round_: int, n: int, batch: int) -> tuple[float, float]:
    """Seconds per event appending n plain events and n personal ones, `batch` per write,
    alternating in blocks of CHUNK events so that both see the same load."""
    plain = personal = 0.0
    for chunk in range(0, n, CHUNK):
        size = min(CHUNK, n - chunk)
        plain += append_time(store, f"plain/w{batch}-{round_}-{chunk}", Plain, size, batch)
        personal += append_time(store, f"personal/w{batch}-{round_}-{chunk}", WithPersonal,
                                size, batch)
    blocks = -(-n // CHUNK)
    return plain / blocks, personal / blocks


def hydrate_time(store: Store, entity_type: str, entity_id: str) -> float:
    count = 0

    def handle(event: object) -> None:
        nonlocal count
        count += 1

    started = time.perf_counter()
    store.project(entity_type, entity_id, handle)
    elapsed = time.perf_counter() - started
    assert count == 1000, count
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("ES_REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench-pii-{uuid.uuid4().hex[:8]}"
    key = MasterKeys(new_master_key())
    events = {"plain": [Plain], "personal": [WithPersonal]}

    def new_store() -> Store:
        return Store(RedisStorage(client, prefix=prefix, encryption=key), events=events)

    store = new_store()
    try:
        times: dict[str, list[float]] = {}

        def keep(name: str, value: float) -> None:
            times.setdefault(name, []).append(value)

        for round_ in range(args.rounds):
            for batch, name in ((1, "A"), (10, "A10")):
                plain, personal = append_times(store, round_, args.n, batch)
                keep(f"{name} plain", plain)
                keep(f"{name} personal", personal)
            if round_ == 0:  # the entities hydrated: 1,000 events each
                append_time(store, "plain/h", Plain, 1000, 10)
                append_time(store, "personal/h", WithPersonal, 1000, 10)
            keep("H plain", hydrate_time(store, "plain", "h"))
            keep("H personal", hydrate_time(store, "personal", "h"))
            keep("H0 personal", hydrate_time(new_store(), "personal", "h"))
        print(f"redis {args.redis_url.rsplit('@', 1)[-1]}, n={args.n}, rounds={args.rounds}")
        def ratio(name: str, plain_name: str) -> str:
            ratios = [a / b for a, b in zip(times[name], times[plain_name], strict=True)]
            return (f"ratio {statistics.median(ratios):.2f} "
                    f"({min(ratios):.2f}-{max(ratios):.2f})")

        for name in ("A", "A10"):
            plain = statistics.median(times[f"{name} plain"])
            personal = statistics.median(times[f"{name} personal"])
            print(f"{name:4} append   plain {plain * 1e6:7.1f} us/event   personal "
                  f"{personal * 1e6:7.1f} us/event   "
                  f"{ratio(f'{name} personal', f'{name} plain')}")
        plain = statistics.median(times["H plain"])
        for name in ("H", "H0"):
            personal = statistics.median(times[f"{name} personal"])
            print(f"{name:4} hydrate  plain {plain * 1e3:7.2f} ms/1000    personal "
                  f"{personal * 1e3:7.2f} ms/1000    {ratio(f'{name} personal', 'H plain')}")
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        client.close()


if __name__ == "__main__":
    main()
