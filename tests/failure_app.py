"""An app for the failure tests, wired from settings as a user's app would be:
`Store.from_settings` reads ES_REDIS_URL or ES_REDIS_SENTINELS, ES_PREFIX, ES_WAIT_REPLICAS...

Every handler call is logged to the Redis list `<prefix>:log:<subscriber>` as
"<entity ID>:<event number>" (through the store's own Redis, so under its prefix: an ACL user
confined to the prefix may write it), so a test can check order, loss and duplicates.
"""

from __future__ import annotations

import os

from es_workers import Content, Event, RedisStorage, Store

PREFIX = os.environ["ES_PREFIX"]


class Added(Content):
    amount: int


store = Store.from_settings(events={"counter": [Added]})
assert isinstance(store.storage, RedisStorage)
client = store.storage.client


def record(subscriber_id: str, event: Event) -> None:
    client.rpush(f"{PREFIX}:log:{subscriber_id}", f"{event.entity_id}:{event.event_number}")


@store.subscribe("counter", "fast")
def fast(event: Event) -> None:
    record("fast", event)


@store.subscribe("counter", "slow")
def slow(event: Event) -> None:
    record("slow", event)
