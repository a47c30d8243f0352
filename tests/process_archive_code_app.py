"""An app for the archive process tests whose storage and archive are built in code (no
ES_ARCHIVE_URL): Redis from ES_REDIS_URL and ES_PREFIX, the archive from APP_ARCHIVE_URL,
the hot window from APP_HOT."""

from __future__ import annotations

import os

import redis
from process_archive_app import Deposited, Opened

from es_workers import HotWindow, RedisStorage, Store
from es_workers.postgres import PostgresArchive

PREFIX = os.environ["ES_PREFIX"]
store = Store(RedisStorage(redis.Redis.from_url(os.environ["ES_REDIS_URL"]), prefix=PREFIX,
                           partitions=4,
                           archive=PostgresArchive(os.environ["APP_ARCHIVE_URL"], prefix=PREFIX)),
              events={"account": [Opened, Deposited]},
              archive={"account": HotWindow(events=int(os.environ["APP_HOT"]))})
