"""A writer process for tests/test_concurrency.py (not a test module).

    python tests/race_writer.py REDIS_URL PREFIX ENTITY_ID WRITER COUNT

Appends COUNT Deposited(amount=WRITER) events to account ENTITY_ID, re-reading and
retrying on every ConcurrencyError, as an application command handler would. It announces
itself with INCR PREFIX:ready and starts writing once PREFIX:go exists, so that all the
writers race. Prints the number of conflicts it met.
"""

from __future__ import annotations

import sys
import time

import redis
from conftest import ACCOUNT_EVENTS, Deposited

from es_workers import ConcurrencyError, RedisStorage, Store


def main(url: str, prefix: str, entity_id: str, writer: int, count: int) -> None:
    client = redis.Redis.from_url(url)
    store = Store(RedisStorage(client, prefix=prefix), events=ACCOUNT_EVENTS)
    client.incr(f"{prefix}:ready")
    deadline = time.monotonic() + 30
    while not client.exists(f"{prefix}:go"):
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
        time.sleep(0.005)

    stream = store.open("account", entity_id)
    list(stream.all())
    conflicts = 0
    written = 0
    while written < count:
        try:
            stream.write(Deposited(amount=writer))
            written += 1
        except ConcurrencyError:
            conflicts += 1
            stream = store.open_from("account", entity_id, stream.position)
            list(stream.all())
    client.close()
    print(conflicts)


if __name__ == "__main__":
    url, prefix, entity_id, writer, count = sys.argv[1:]
    main(url, prefix, entity_id, int(writer), int(count))
