"""Writes `count` events over `entities` counters at about `rate` events/s (process tests)."""

from __future__ import annotations

import sys
import time

from tests.process_app import Added, store


def main(count: int, entities: int, rate: float) -> None:
    streams = {}
    started = time.monotonic()
    for i in range(count):
        entity_id = f"c{i % entities}"
        stream = streams.get(entity_id)
        if stream is None:
            stream = streams[entity_id] = store.open("counter", entity_id)
            stream.write(Added(amount=1))
        else:
            stream.write(Added(amount=i))
        pause = started + (i + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
