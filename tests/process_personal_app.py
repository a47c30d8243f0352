"""An app with personal data for the process tests, run by real `es-workers publish` /
`worker` processes: configured by ES_REDIS_URL, ES_PREFIX and ES_ENCRYPTION_KEY.

The subscriber `copies` logs each event it is handed to the Redis list
`<prefix>:log:copies` as "<entity ID>:<event number>:<forgotten 0|1>:<hash of the email>"
(a hash: the log must not hold the plain text either); `forgets` logs each forget notice.
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated

import redis

from es_workers import Content, Event, Personal, Store, SubjectForgotten
from es_workers.forgetting import FORGOTTEN_TYPE


class Registered(Content):
    email: Annotated[str, Personal]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


store = Store.from_settings(events={"customer": [Registered]})
log = redis.Redis.from_url(os.environ["ES_REDIS_URL"])
PREFIX = os.environ["ES_PREFIX"]


@store.subscribe("customer", "copies")
def copies(event: Event) -> None:
    assert isinstance(event.content, Registered)
    log.rpush(f"{PREFIX}:log:copies", f"{event.entity_id}:{event.event_number}:"
              f"{int(event.forgotten)}:{digest(event.content.email)}")


@store.subscribe(FORGOTTEN_TYPE, "forgets")
def forgets(event: Event) -> None:
    assert isinstance(event.content, SubjectForgotten)
    log.rpush(f"{PREFIX}:log:forgets", event.content.subject)
