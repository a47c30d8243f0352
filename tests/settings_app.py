"""An app configured by its `ES_...` settings only (`Store.from_settings`), as a user's app
is: for tests that run the `es-workers` command against servers of their own."""

from __future__ import annotations

from es_workers import Content, Event, Store


class Opened(Content):
    owner: str


class Deposited(Content):
    amount: int


EVENTS: dict[str, list[type[Content]]] = {"account": [Opened, Deposited]}

store = Store.from_settings(events=EVENTS)


@store.subscribe("account", "audit")
def audit(event: Event) -> None:
    pass
