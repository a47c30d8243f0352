"""A publisher with no worker for N seconds (default 45): the messages it enqueued once the
writes were relayed and after N seconds more, and its log lines (issue 24: it used to re-send
every lagging notice every ES_REDRIVE_AFTER_MS, one INFO line each).

    python bench/resends.py [SECONDS] [--redis-url URL]

Run it with PYTHONPATH pointing at another checkout to compare with that code.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid
from typing import Any

import dramatiq
import redis

from es_workers import Content, RedisStorage, Store
from es_workers.redis.publisher import Publisher
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus


class Opened(Content):
    owner: str


class Enqueued(dramatiq.Middleware):
    def __init__(self) -> None:
        self.count = 0

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self.count += 1


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("seconds", type=float, nargs="?", default=45.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()
    lines = Lines()
    logger = logging.getLogger("es_workers.publisher")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    prefix = f"bench-resends-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(options.redis_url)
    broker = WakingRedisBroker(url=options.redis_url, namespace=f"{prefix}-dramatiq")
    enqueued = Enqueued()
    broker.add_middleware(enqueued)
    bus = DramatiqEventBus(broker)
    store = Store(RedisStorage(client, prefix=prefix), bus=bus, events={"account": [Opened]})
    store.subscribe("account", "balances", lambda event: None)
    stop = threading.Event()
    thread = threading.Thread(target=Publisher(store.storage, bus).run, args=(stop,))
    thread.start()
    try:
        for i in range(10):
            store.open("account", f"a{i}").write(Opened(owner="x"))
        time.sleep(2)
        relayed = enqueued.count
        time.sleep(options.seconds)
    finally:
        stop.set()
        thread.join()
        broker.close()
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
    print(f"10 entities, no worker: {relayed} messages once relayed, {enqueued.count} after "
          f"{options.seconds:.0f} s more; {len(lines.lines)} publisher log lines")


if __name__ == "__main__":
    main()
