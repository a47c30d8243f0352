"""An app for the archive process tests, run by real `es-workers archive` processes: account
events, configured by the environment (ES_REDIS_URL, ES_PREFIX, ES_ARCHIVE_URL,
ES_ARCHIVE_AFTER...)."""

from __future__ import annotations

from es_workers import Content, Store


class Opened(Content):
    owner: str


class Deposited(Content):
    amount: int


store = Store.from_settings(events={"account": [Opened, Deposited]})
