"""Real publisher and worker processes on real Redis, killed with SIGKILL mid-run.

Checks guarantee 5: kill the publisher or a worker at any instant, start it again: no event
is lost, every subscriber sees each entity's events in order, and an event is handled
twice only when a worker died between running the handler and moving the checkpoint (so
a repeat is always of the last event handled, never of an earlier one).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from conftest import REDIS_URL, delete_prefix, real_redis
from dramatiq.brokers.stub import StubBroker
from kit import ES_WORKERS, ROOT, Processes, wait_for

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    Content,
    DramatiqEventBus,
    RedisStorage,
    Store,
    admin,
)

APP = "tests.process_app:store"
ASYNC_APP = "tests.process_async_app:store"

pytestmark = pytest.mark.process


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Processes, redis.Redis, str]]:
    client = real_redis()
    prefix = f"proc-{uuid.uuid4().hex[:10]}"
    env = dict(os.environ, ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, PYTHONPATH=str(ROOT),
               ES_LOG_LEVEL="INFO")
    processes = Processes(env, tmp_path)
    yield processes, client, prefix
    processes.stop_all()
    delete_prefix(client, prefix)
    delete_prefix(client, f"{prefix}-dq")


def handled(client: redis.Redis, prefix: str, subscriber: str) -> list[tuple[str, int]]:
    items = client.lrange(f"{prefix}:log:{subscriber}", 0, -1)
    pairs = [item.decode().split(":") for item in items]
    return [(entity_id, int(number)) for entity_id, number in pairs]


def wait_until_handled(client: redis.Redis, prefix: str, expected: set[tuple[str, int]],
                       timeout: float, subscribers: tuple[str, ...] = ("fast", "slow"),
                       check: Callable[[], None] | None = None) -> None:
    def done() -> bool:
        return all(expected <= set(handled(client, prefix, s)) for s in subscribers)

    try:
        wait_for(done, "every event handled", timeout=timeout, interval=0.25, check=check)
    except AssertionError:
        missing = {s: len(expected - set(handled(client, prefix, s))) for s in subscribers}
        raise AssertionError(f"events never handled after {timeout} s: {missing}") from None


def assert_in_order_without_loss(log: list[tuple[str, int]], heads: dict[str, int]) -> int:
    """Each entity's handler calls go 1, 2, 3, ... where a number may repeat right away
    (a worker killed after the handler, before the checkpoint). Returns the repeats."""
    last: dict[str, int] = {}
    repeats = 0
    for entity_id, number in log:
        previous = last.get(entity_id, 0)
        assert number in (previous, previous + 1), (
            f"{entity_id}: event {number} handled after {previous}"
        )
        repeats += number == previous
        last[entity_id] = number
    assert last == heads
    return repeats


def test_kill_9_publisher_and_worker_mid_run_loses_nothing_and_keeps_order(setup) -> None:
    processes, client, prefix = setup
    count, entities = 3000, 40
    processes.publisher(APP)
    processes.worker(APP)
    writer = processes.start(
        "writer", sys.executable, "-m", "tests.process_writer", str(count), str(entities), "150"
    )
    kills = 0
    while writer.poll() is None:
        time.sleep(2.5)
        victim = ("publisher", "worker")[kills % 2]
        processes.kill(victim)
        kills += 1
        time.sleep(0.3)
        processes.publisher(APP) if victim == "publisher" else processes.worker(APP)
    assert writer.returncode == 0
    assert kills >= 4, "the writer finished before the processes were killed a few times"

    heads = {f"c{e}": len(range(e, count, entities)) for e in range(entities)}
    expected = {(entity_id, n) for entity_id, head in heads.items() for n in range(1, head + 1)}
    wait_until_handled(client, prefix, expected, timeout=120)

    # Graceful stop: SIGTERM ends both with status 0 (once they have booted: a process
    # signalled while Python is still importing has no handler yet).
    processes.wait_ready("publisher", b" started on ")
    processes.wait_ready("worker", b"ready for action")
    for name in ("publisher", "worker"):
        processes.kill(name, signal.SIGTERM)
        assert processes.running[name].returncode == 0, f"{name} did not stop cleanly"

    for subscriber in ("fast", "slow"):
        log = handled(client, prefix, subscriber)
        repeats = assert_in_order_without_loss(log, heads)
        assert repeats <= 4 * kills, f"{subscriber}: {repeats} repeats for {kills} kills"


class Added(Content):  # the apps' event, declared here without importing (and wiring) them
    amount: int


async def write_async(prefix: str, heads: dict[str, int]) -> None:
    """Writes through an AsyncStore, entities concurrently: the workers' publisher relays
    its events like any other."""
    storage = AsyncRedisStorage(
        redis.asyncio.Redis.from_url(REDIS_URL), prefix=prefix, partitions=4  # as the app
    )
    async with AsyncStore(storage, events={"counter": [Added]}) as store:

        async def entity(entity_id: str, count: int) -> None:
            async with store.open("counter", entity_id) as stream:
                for number in range(count):
                    await stream.write(Added(amount=number))

        await asyncio.gather(*(entity(e, count) for e, count in heads.items()))


def test_async_handlers_in_worker_processes_keep_order_and_a_failing_one_is_parked(
    setup,
) -> None:
    processes, client, prefix = setup
    processes.publisher(ASYNC_APP)
    processes.worker(ASYNC_APP)
    heads = {f"c{e}": 15 for e in range(20)} | {"poison": 4}

    asyncio.run(write_async(prefix, heads))

    expected = {(entity_id, n) for entity_id, head in heads.items() for n in range(1, head + 1)}
    wait_until_handled(client, prefix, expected, timeout=60, subscribers=("ordered",))
    assert assert_in_order_without_loss(handled(client, prefix, "ordered"), heads) == 0
    store = Store(RedisStorage(client, prefix=prefix), bus=DramatiqEventBus(StubBroker()),
                  events={"counter": [Added]})
    store.subscribe("counter", "fragile", lambda event: None)  # as the app names it
    wait_for(lambda: admin.parked(store, "fragile", "counter"), "poison parked for fragile")
    (parked,) = admin.parked(store, "fragile", "counter")
    assert (parked.entity_id, parked.event_number) == ("poison", 2)
    assert (parked.error, parked.attempts) == ("RuntimeError: poison #2", 3)
    others = {(e, n) for e, n in expected if e != "poison"} | {("poison", 1)}
    wait_until_handled(client, prefix, others, timeout=30, subscribers=("fragile",))
    assert sorted(handled(client, prefix, "fragile")) == sorted(others)


def test_kill_9_of_the_scavenger_mid_batch_loses_no_kept_event_and_leaves_no_orphan_key(
        setup) -> None:
    """`es-workers scavenge` killed while it removes: every event the retention limit keeps,
    and every event the subscriber has not handled, is still there and reads whole; no key
    but the store's own; a second run finishes the job."""
    processes, client, prefix = setup
    entities, each, kept = 3000, 60, 5  # kept: the app's Retention(max_count=5)
    storage = RedisStorage(client, prefix=prefix, partitions=4)
    store = Store(storage, events={"counter": [Added]})
    for n in range(entities):
        with store.open("counter", f"c{n}") as stream:
            stream.write(*(Added(amount=i) for i in range(each)))
    # "audit" handled every event of the even entities, the first 20 of the odd ones.
    storage.state.move_checkpoints("audit", "counter", {
        f"c{n}": each if n % 2 == 0 else 20 for n in range(entities)})
    streams = [storage.keys.stream("counter", f"c{n}") for n in range(entities)]

    def lengths() -> list[int]:
        pipe = client.pipeline(transaction=False)
        for key in streams:
            pipe.xlen(key)
        return [int(n) for n in pipe.execute()]

    scavenger = processes.start("scavenge", ES_WORKERS, "scavenge",
                                "tests.process_retention_app:store", "--yes")
    wait_for(lambda: min(lengths()) < each or scavenger.poll() is not None,
             "the scavenger to start removing", timeout=60, interval=0.01)
    processes.kill("scavenge")
    partly = lengths()
    assert any(n == each for n in partly), "the scavenger finished before it was killed"
    assert any(n < each for n in partly)

    def check_everything_kept(final: bool) -> None:
        for n in range(entities):
            # The kept events read; those "audit" has not handled are still stored for it.
            numbers = [e.event_number for e in store.read("counter", f"c{n}", each - kept)]
            assert numbers == list(range(each - kept + 1, each + 1)), f"c{n}"
            if n % 2:
                stored = [e.event_number for e in storage.read_stored("counter", f"c{n}", 20)]
                assert stored == list(range(21, each + 1)), f"c{n}"
        if final:
            assert lengths() == [kept if n % 2 == 0 else each - 20 for n in range(entities)]
        known = ("stream:counter:", "heads:counter", "index:counter", "truncated:counter",
                 "checkpoints:audit:counter", "outbox", "log")
        for key in client.scan_iter(f"{prefix}:*", count=1000):
            name = key.decode()
            assert name == f"{prefix}:meta" or name.startswith(f"{prefix}:subscribers") or any(
                part in name.split("}:", 1)[-1] for part in known), f"orphan key {name}"
            if ":stream:counter:" in name:
                assert name in set(streams), f"orphan stream {name}"

    check_everything_kept(final=False)
    again = processes.start("scavenge-again", ES_WORKERS, "scavenge",
                            "tests.process_retention_app:store", "--yes")
    assert again.wait(timeout=120) == 0
    check_everything_kept(final=True)
    with store.open_from("counter", "c0", each) as stream:  # numbering goes on
        list(stream.all())
        assert stream.write(Added(amount=0)) and stream.position == each + 1
