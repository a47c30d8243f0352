"""WakingRedisBroker: idle consumers are woken by an enqueue instead of polling.

The idle timeout is set far above the test's wait, so a message handled in time can only
have been picked up through the wake-up (these check behaviour, not speed).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import dramatiq
import fakeredis
import pytest
import redis
from conftest import REDIS_URL, delete_prefix
from kit import wait_for

from es_workers.workers.broker import WakingRedisBroker

pytestmark = pytest.mark.single_redis  # Dramatiq's Redis broker cannot run on a cluster

LONG_IDLE_MS = 60_000  # a consumer that missed its wake-up sleeps this long


@pytest.fixture
def broker(backend: str, redis_client: redis.Redis) -> Iterator[WakingRedisBroker]:
    namespace = f"t-wake-{uuid.uuid4().hex[:10]}"
    if backend == "fakeredis":
        server = redis_client.connection_pool.connection_kwargs["server"]
        made = WakingRedisBroker(client=fakeredis.FakeRedis(server=server), namespace=namespace,
                                 idle_timeout_ms=LONG_IDLE_MS)
    else:
        made = WakingRedisBroker(url=REDIS_URL, namespace=namespace, idle_timeout_ms=LONG_IDLE_MS)
    yield made
    made.close()
    delete_prefix(redis_client, namespace)


def run_worker(broker: WakingRedisBroker, threads: int = 2) -> dramatiq.Worker:
    # worker_timeout only paces the delay queues here; the main queues wait for wake-ups,
    # or for the broker's idle timeout (LONG_IDLE_MS).
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=threads)
    worker.start()
    return worker


def test_an_idle_consumer_is_woken_by_a_message_long_before_its_idle_timeout(
    broker: WakingRedisBroker,
) -> None:
    handled = threading.Event()
    actor = dramatiq.Actor(lambda: handled.set(), broker=broker, actor_name="wake",
                           queue_name="wake", priority=0, options={"max_retries": 0})
    worker = run_worker(broker)
    try:
        wait_for(lambda: broker._wakeups is not None, "the consumers to start")
        threading.Event().wait(0.3)  # let the consumers find the queue empty and wait
        actor.send()
        assert handled.wait(10), "the message was not handled: the wake-up did not arrive"
    finally:
        worker.stop(timeout=10_000)


def test_a_consumer_with_its_prefetch_full_keeps_fetching_without_a_wake_up(
    broker: WakingRedisBroker,
) -> None:
    # One thread, so a prefetch of 2: the consumer is often full, and once the 30 messages
    # are enqueued no further enqueue comes to wake it.
    done: list[int] = []
    actor = dramatiq.Actor(lambda n: done.append(n), broker=broker, actor_name="busy",
                           queue_name="busy", priority=0, options={"max_retries": 0})
    for n in range(30):
        actor.send(n)
    worker = run_worker(broker, threads=1)
    try:
        wait_for(lambda: len(done) == 30, "all 30 messages to be handled", timeout=20)
    finally:
        worker.stop(timeout=10_000)
    assert sorted(done) == list(range(30))


def test_delayed_messages_still_arrive(broker: WakingRedisBroker) -> None:
    handled = threading.Event()
    actor = dramatiq.Actor(lambda: handled.set(), broker=broker, actor_name="later",
                           queue_name="later", priority=0, options={"max_retries": 0})
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        actor.send_with_options(delay=50)
        assert handled.wait(10), "a delayed message was never handled"
    finally:
        worker.stop(timeout=10_000)


def test_without_wake_ups_a_consumer_still_fetches_every_idle_timeout(
    backend: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"t-wake-{uuid.uuid4().hex[:10]}"
    if backend == "fakeredis":
        server = redis_client.connection_pool.connection_kwargs["server"]
        broker = WakingRedisBroker(client=fakeredis.FakeRedis(server=server),
                                   namespace=namespace, idle_timeout_ms=200)
    else:
        broker = WakingRedisBroker(url=REDIS_URL, namespace=namespace, idle_timeout_ms=200)
    monkeypatch.setattr(broker.client, "publish", lambda *args: 0)  # every wake-up is lost
    handled = threading.Event()
    actor = dramatiq.Actor(lambda: handled.set(), broker=broker, actor_name="lost",
                           queue_name="lost", priority=0, options={"max_retries": 0})
    worker = dramatiq.Worker(broker, worker_timeout=200, worker_threads=1)
    worker.start()
    try:
        threading.Event().wait(0.3)
        actor.send()
        assert handled.wait(10), "a message whose wake-up was lost was never handled"
    finally:
        worker.stop(timeout=10_000)
        broker.close()
        delete_prefix(redis_client, namespace)


def test_an_outage_of_the_wake_channel_logs_one_warning_per_retry_and_one_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = fakeredis.FakeServer(version=(7, 0))
    broker = WakingRedisBroker(client=fakeredis.FakeRedis(server=server))
    caplog.set_level("INFO", logger="es_workers.workers.broker")
    try:
        broker.wakeups()  # the listener thread starts with the first consumer
        server.connected = False  # every command now fails with ConnectionError
        wait_for(lambda: "(attempt 2)" in caplog.text, "a second retry")
        server.connected = True
        wait_for(lambda: "recovered after" in caplog.text, "the recovered line")
    finally:
        broker.close()
    messages = [r.getMessage() for r in caplog.records]
    retries = [m for m in messages if "Redis broker unavailable" in m]
    assert [m.rsplit("(attempt ", 1)[1] for m in retries] == [
        f"{n})" for n in range(1, len(retries) + 1)
    ]
    [recovered] = [m for m in messages if "recovered" in m]
    assert recovered.startswith("Redis broker recovered after")
