"""An app on a Redis Cluster with RabbitMQ, wired from settings as users deploy it: run by
real `es-workers publish` / `worker` processes (test_processes_cluster.py, bench/cluster.py).

Configured by environment: ES_REDIS_URL (any node of the cluster), ES_BROKER_URL (amqp://),
ES_PREFIX, and the publisher and delivery timings. Every handler call is logged to a Redis
list `<prefix>:log:<subscriber>` as "<entity ID>:<event number>".

`python -m tests.cluster_app ENTITIES EVENTS RATE` writes until each of ENTITIES counters
has EVENTS events, at about RATE events/s, resuming where a killed writer stopped.
"""

from __future__ import annotations

import random
import sys
import time

from es_workers import Content, Event, Store
from es_workers.settings import load_settings

settings = load_settings()


class Added(Content):
    amount: int


store = Store.from_settings(events={"counter": [Added]}, settings=settings)
client = store.storage.client  # type: ignore[attr-defined]


def record(subscriber_id: str, event: Event) -> None:
    item = f"{event.entity_id}:{event.event_number}"
    client.rpush(f"{settings.prefix}:log:{subscriber_id}", item)


@store.subscribe("counter", "fast")
def fast(event: Event) -> None:
    record("fast", event)


@store.subscribe("counter", "slow")
def slow(event: Event) -> None:
    time.sleep(random.uniform(0, 0.004))  # kills land in the middle of handling
    record("slow", event)


def write(entities: int, events: int, rate: float) -> None:
    started, written = time.monotonic(), 0
    for _ in range(events):
        for e in range(entities):
            with store.open("counter", f"c{e}") as stream:
                position = sum(1 for _ in stream.all())
                if position >= events:
                    continue
                stream.write(Added(amount=position + 1))
            written += 1
            pause = started + written / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)


if __name__ == "__main__":
    write(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
