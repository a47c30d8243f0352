"""The app run by bench/soak.py's publisher, workers and writers.

Configured by `ES_...` settings (bench/soak.py sets ES_REDIS_URL, ES_PREFIX and short
delivery timings) and by:

- SOAK_FLAKY: the fraction of deliveries the `flaky` subscriber fails (transient: a retry
  succeeds);
- SOAK_PARK_EVERY: every entity `c<i>` with `i % SOAK_PARK_EVERY == 0` makes `flaky` fail on
  its event 2 for good, so that entity is parked for `flaky` (0: none is).

Each handled event adds 1 to the entity's field in the hash `<prefix>:soak:<subscriber>`,
so the bench sees losses (a count below the head) and repeats (above it).
"""

from __future__ import annotations

import os
import random

import redis

from es_workers import Content, Event, Store


class Added(Content):
    amount: int


class Noted(Content):
    text: str


PREFIX = os.environ["ES_PREFIX"]
FLAKY = float(os.environ.get("SOAK_FLAKY", "0.02"))
PARK_EVERY = int(os.environ.get("SOAK_PARK_EVERY", "0"))

store = Store.from_settings(events={"counter": [Added, Noted]})
client = redis.Redis.from_url(os.environ["ES_REDIS_URL"])


def handled_key(subscriber_id: str) -> str:
    return f"{PREFIX}:soak:{subscriber_id}"


def doomed(entity_id: str) -> bool:
    """Entities whose event 2 `flaky` never handles: they end up parked."""
    return PARK_EVERY > 0 and int(entity_id[1:]) % PARK_EVERY == 0


@store.subscribe("counter", "tally")
def tally(event: Event) -> None:
    client.hincrby(handled_key("tally"), event.entity_id, 1)


@store.subscribe("counter", "flaky")
def flaky(event: Event) -> None:
    if event.event_number == 2 and doomed(event.entity_id):
        raise RuntimeError(f"soak: {event.entity_id} event 2 always fails")
    if random.random() < FLAKY:
        raise RuntimeError("soak: a transient failure")
    client.hincrby(handled_key("flaky"), event.entity_id, 1)
