"""Writes `count` events over `entities` counters (failure tests), riding out Redis failures
the way the README says: a write that raises StorageUnavailableError is written again, with
the same contents on the same Stream, until it succeeds (applied exactly once); so is a write
that raised DurabilityError (stored, not yet confirmed by the replicas asked for).

Prints one line per acknowledged write, "ack <entity ID> <event number>", and one per failed
attempt, "unavailable <seconds the attempt took> <outcome_unknown>" or "unconfirmed <seconds>",
flushed as they happen.

A fourth argument "async" writes through `AsyncStore.from_settings` (the same ES_ settings)
instead of the app's Store: the failure tests run the writer on either half.
"""

from __future__ import annotations

import asyncio
import sys
import time

from es_workers import AsyncStore, DurabilityError, StorageUnavailableError
from tests.failure_app import Added, store


def main(count: int, entities: int, rate: float) -> None:
    streams = {}
    started = time.monotonic()
    for i in range(count):
        entity_id = f"c{i % entities}"
        stream = streams.get(entity_id) or streams.setdefault(
            entity_id, store.open("counter", entity_id)
        )
        while True:
            attempt = time.monotonic()
            try:
                stream.write(Added(amount=i))
                break
            except StorageUnavailableError as error:
                took = time.monotonic() - attempt
                print(f"unavailable {took:.3f} {error.outcome_unknown}", flush=True)
                time.sleep(0.2)
            except DurabilityError:  # stored, not yet on the replicas: wait for them again
                print(f"unconfirmed {time.monotonic() - attempt:.3f}", flush=True)
                time.sleep(0.2)
        print(f"ack {entity_id} {stream.position}", flush=True)
        pause = started + (i + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)


async def main_async(count: int, entities: int, rate: float) -> None:
    """`main` through an AsyncStore of the same settings."""
    async with AsyncStore.from_settings(events={"counter": [Added]}) as async_store:
        streams = {}
        started = time.monotonic()
        for i in range(count):
            entity_id = f"c{i % entities}"
            stream = streams.get(entity_id) or streams.setdefault(
                entity_id, async_store.open("counter", entity_id)
            )
            while True:
                attempt = time.monotonic()
                try:
                    await stream.write(Added(amount=i))
                    break
                except StorageUnavailableError as error:
                    took = time.monotonic() - attempt
                    print(f"unavailable {took:.3f} {error.outcome_unknown}", flush=True)
                    await asyncio.sleep(0.2)
                except DurabilityError:
                    print(f"unconfirmed {time.monotonic() - attempt:.3f}", flush=True)
                    await asyncio.sleep(0.2)
            print(f"ack {entity_id} {stream.position}", flush=True)
            pause = started + (i + 1) / rate - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)


if __name__ == "__main__":
    arguments = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
    if sys.argv[4:] == ["async"]:
        asyncio.run(main_async(*arguments))
    else:
        main(*arguments)
