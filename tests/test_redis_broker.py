"""WakingRedisBroker: idle consumers are woken by an enqueue instead of polling.

The idle timeout is set far above the test's wait, so a message handled in time can only
have been picked up through the wake-up (these check behaviour, not speed).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import dramatiq
import fakeredis
import pytest
import redis
from conftest import REDIS_URL, delete_prefix
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from kit import wait_for

from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus

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


def _run_subscribed_worker(broker: WakingRedisBroker, threads: int = 2) -> dramatiq.Worker:
    """A worker whose wake-up listener has subscribed: an enqueue from now on wakes it."""
    worker = run_worker(broker, threads)
    wait_for(lambda: _subscribers(broker) > 0, "the wake-up listener to subscribe")
    return worker


def _subscribers(broker: WakingRedisBroker) -> int:
    [(_, count)] = cast(Any, broker.client).pubsub_numsub(broker.wake_channel)
    return int(count)


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
    # Subscribed first: a wake-up published before would be lost, and the delay queue's
    # consumer would look again only after its idle timeout (60 s here, 1 s by default).
    worker = _run_subscribed_worker(broker, threads=1)
    try:
        actor.send_with_options(delay=50)
        assert handled.wait(10), "a delayed message was never handled"
    finally:
        worker.stop(timeout=10_000)


def _handled_at(broker: WakingRedisBroker, name: str) -> tuple[dramatiq.Actor[Any, Any],
                                                               dict[str, float]]:
    """An actor that notes when (current_millis) it handled each message, by message ID."""
    handled: dict[str, float] = {}

    def note(message_id: str) -> None:
        handled[message_id] = time.time() * 1000

    actor = dramatiq.Actor(note, broker=broker, actor_name=name, queue_name=name, priority=0,
                           options={"max_retries": 0})
    return actor, handled


def _send_delayed(actor: dramatiq.Actor[Any, Any], delay_ms: int) -> tuple[str, float]:
    """Sends a message naming itself with `delay_ms`; returns its ID and eta."""
    message_id = uuid.uuid4().hex
    enqueued = actor.send_with_options(args=(message_id,), delay=delay_ms)
    return message_id, enqueued.options["eta"]


def test_a_delayed_message_is_handled_at_its_eta_not_at_the_idle_timeout(
    broker: WakingRedisBroker,
) -> None:
    # The delay queue's consumer is woken by the enqueue and holds the message: it must
    # then wait for the eta, not for a wake-up (none comes) or its idle timeout (60 s).
    actor, handled = _handled_at(broker, "eta")
    worker = _run_subscribed_worker(broker)
    try:
        threading.Event().wait(0.3)  # let the consumers find the queues empty and wait
        message_id, eta = _send_delayed(actor, 300)
        wait_for(lambda: message_id in handled, "the delayed message", timeout=10)
    finally:
        worker.stop(timeout=10_000)
    assert handled[message_id] >= eta, "handled before its eta"


def test_delayed_messages_are_all_handled_in_eta_order(broker: WakingRedisBroker) -> None:
    actor, handled = _handled_at(broker, "etas")
    worker = _run_subscribed_worker(broker, threads=1)
    try:
        sent = [_send_delayed(actor, delay) for delay in (1200, 400, 1600, 800, 400)]
        wait_for(lambda: len(handled) == len(sent), "every delayed message", timeout=10)
    finally:
        worker.stop(timeout=10_000)
    assert set(handled) == {message_id for message_id, _ in sent}
    for message_id, eta in sent:
        assert handled[message_id] >= eta, "handled before its eta"
    # 400 ms apart (two share one): each is moved to the queue, and handled, in turn.
    by_eta = [message_id for message_id, _ in sorted(sent, key=lambda pair: pair[1])]
    by_handling = sorted(handled, key=lambda message_id: handled[message_id])
    assert by_handling[2:] == by_eta[2:] and set(by_handling[:2]) == set(by_eta[:2])


def test_a_failed_message_is_retried_from_the_delay_queue(broker: WakingRedisBroker) -> None:
    attempts: list[int] = []

    def fail_once() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("the first attempt fails")

    actor = dramatiq.Actor(fail_once, broker=broker, actor_name="again", queue_name="again",
                           priority=0,
                           options={"max_retries": 1, "min_backoff": 100, "max_backoff": 200})
    worker = _run_subscribed_worker(broker)
    try:
        actor.send()
        wait_for(lambda: len(attempts) == 2, "the retry (idle timeout: 60 s)", timeout=10)
    finally:
        worker.stop(timeout=10_000)
    assert attempts == [1, 2]


def test_idle_delay_queue_consumers_wait_for_a_wake_up_instead_of_polling(
    broker: WakingRedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each fetch of a consumer is one call of the broker's do_fetch (its one Redis command
    # while idle): counted per queue. At the 20 ms worker timeout below, a polling consumer
    # fetches 50-100 times in the 2 s watched.
    fetches: Counter[str] = Counter()
    fetch = broker.do_fetch

    def counted(queue_name: str, *args: Any) -> Any:
        fetches[queue_name] += 1
        return fetch(queue_name, *args)

    monkeypatch.setattr(broker, "do_fetch", counted)
    dramatiq.Actor(lambda: None, broker=broker, actor_name="idle", queue_name="idle",
                   priority=0, options={})
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        wait_for(lambda: fetches["idle.DQ"] and fetches["idle"], "each consumer's first fetch")
        before = fetches.copy()
        threading.Event().wait(2.0)  # watched: nothing is sent, nothing should be fetched
        after = fetches.copy()
    finally:
        worker.stop(timeout=10_000)
    assert after["idle.DQ"] - before["idle.DQ"] < 10
    assert after["idle"] - before["idle"] < 10


def test_a_delay_queue_consumer_with_its_prefetch_full_sleeps_until_the_earliest_eta(
    broker: WakingRedisBroker,
) -> None:
    # Driven as Dramatiq's consumer thread drives it: each message with an eta is held until
    # then, and acked once moved (here: just acked). With its prefetch (2) full, the
    # consumer cannot fetch the third message: it must sleep until an eta, not spin.
    actor, _ = _handled_at(broker, "full")
    for delay in (300, 600, 900):
        _send_delayed(actor, delay)
    consumer = broker.consume("full.DQ", prefetch=2, timeout=20)
    held: list[Any] = []
    empty_returns = 0
    moved = 0
    deadline = time.monotonic() + 10
    try:
        while moved < 3 and time.monotonic() < deadline:
            message = next(consumer)
            if message is None:
                empty_returns += 1
            else:
                held.append(message)
            for due in [m for m in held if m.options["eta"] <= time.time() * 1000]:
                held.remove(due)
                consumer.ack(due)
                moved += 1
    finally:
        consumer.close()
    assert moved == 3
    # Sleeping to each eta: a handful. Spinning: thousands; polling every 20 ms: ~45.
    assert empty_returns < 15


@pytest.mark.parametrize("delay", [None, 300], ids=["new", "delayed"])
def test_without_wake_ups_a_consumer_still_fetches_every_idle_timeout(
    backend: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, delay: int | None
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
        actor.send_with_options(delay=delay)
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


def test_a_message_enqueued_unannounced_is_fetched_once_the_listener_subscribes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wake-up published while the listener was not subscribed (at start, during an
    outage) is lost; once it subscribes again every waiting consumer fetches, rather than
    sleeping out its idle timeout (LONG_IDLE_MS) on a message that is there."""
    server = fakeredis.FakeServer(version=(7, 0))
    broker = WakingRedisBroker(client=fakeredis.FakeRedis(server=server),
                               namespace=f"t-wake-{uuid.uuid4().hex[:10]}",
                               idle_timeout_ms=LONG_IDLE_MS)
    caplog.set_level("INFO", logger="es_workers.workers.broker")
    handled = threading.Event()
    actor = dramatiq.Actor(lambda: handled.set(), broker=broker, actor_name="unannounced",
                           queue_name="default", priority=0, options={})
    worker = _run_subscribed_worker(broker)
    try:
        # The consumer fetched (nothing) and waits for a wake-up of its queue.
        wait_for(lambda: "default" in broker.wakeups()._changed, "the consumer to wait")
        # Enqueued as Dramatiq's own RedisBroker does: no wake-up is published.
        RedisBroker.enqueue(broker, actor.message())
        server.connected = False  # the listener's connection fails: it subscribes again
        # Only the listener asks Redis meanwhile (the consumers wait): its second attempt
        # failed, so it will subscribe anew once the server is back.
        wait_for(lambda: "(attempt 2)" in caplog.text, "the listener to retry")
        server.connected = True
        assert handled.wait(10), (
            f"the consumer slept on a message that was in its queue; log:\n{caplog.text}")
    finally:
        worker.stop()
        broker.close()


class _Recorder(dramatiq.Middleware):
    """The enqueue signals middleware sees (tracing and Prometheus hook the same ones)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        self.seen.append(("before", message.message_id))

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        self.seen.append(("after", message.message_id))


def _wake_ups(broker: WakingRedisBroker, send: Callable[[], None]) -> list[str]:
    """The queue names published on the wake channel while `send` ran, counted by a
    subscriber of the channel (a marker published after `send` returned ends the count:
    Redis delivers one channel's messages in the order it ran the PUBLISHes)."""
    pubsub = cast(Any, broker.client).pubsub()
    try:
        pubsub.subscribe(broker.wake_channel)
        confirmed = pubsub.get_message(timeout=10)  # the server subscribed us: count from here
        assert confirmed is not None and confirmed["type"] == "subscribe"
        send()
        marker = f"end-{uuid.uuid4().hex}"
        broker.client.publish(broker.wake_channel, marker)
        names: list[str] = []
        while not names or names[-1] != marker:
            message = pubsub.get_message(timeout=10)
            assert message is not None, "the marker never came back"
            names.append(message["data"].decode())
        return names[:-1]
    finally:
        pubsub.close()


def _fetch_all(broker: WakingRedisBroker, queue_name: str, expected: int) -> list[Any]:
    """Every message waiting in the queue, through a consumer of the broker (acked)."""
    consumer = broker.consume(queue_name, prefetch=expected + 1, timeout=100)
    got: list[Any] = []
    try:
        wait_for(lambda: _took(consumer, got) >= expected,
                 f"{expected} messages on {queue_name}")
        for message in got:
            consumer.ack(message)
    finally:
        consumer.close()
    return got


def _took(consumer: Any, got: list[Any]) -> int:
    message = next(consumer)
    if message is not None:
        got.append(message)
    return len(got)


def _bus_with_two_subscribers(broker: dramatiq.Broker) -> DramatiqEventBus:
    bus = DramatiqEventBus(broker)
    bus.subscribe("order", "totals", lambda event: None)
    bus.subscribe("order", "emails", lambda event: None)
    return bus


def test_a_round_of_notices_wakes_each_queue_once_and_every_message_arrives(
    broker: WakingRedisBroker,
) -> None:
    # 70 entities of one partition: 3 messages (of <= 32 entities) for each of 2 subscribers.
    # Before enqueue_many each of the 6 messages published its own wake-up.
    recorder = _Recorder()
    broker.add_middleware(recorder)
    bus = _bus_with_two_subscribers(broker)
    positions: list[tuple[str, int | None]] = [(f"o{n}", n + 1) for n in range(70)]

    woken = _wake_ups(broker, lambda: bus.notify_many("order", positions))

    assert sorted(woken) == ["emails", "totals"]
    for queue_name in ("totals", "emails"):
        messages = _fetch_all(broker, queue_name, 3)
        assert len(messages) == 3
        named = [tuple(pair) for m in messages for pair in m.kwargs["entities"]]
        assert sorted(named) == sorted(positions)
        assert all(m.actor_name == f"es_{queue_name}" for m in messages)
    ids = [message_id for signal, message_id in recorder.seen if signal == "before"]
    assert len(ids) == len(set(ids)) == 6
    # Each message: before_enqueue ahead of the round trip, after_enqueue once it is in.
    assert [signal for signal, _ in recorder.seen] == ["before"] * 6 + ["after"] * 6
    assert [m for s, m in recorder.seen if s == "after"] == ids


def test_enqueue_many_loads_the_dispatch_script_again_on_a_redis_that_lost_it() -> None:
    server = fakeredis.FakeServer(version=(7, 0))  # this test's own: flushing it is safe
    client = fakeredis.FakeRedis(server=server)
    broker = WakingRedisBroker(client=client)
    try:
        actor = dramatiq.Actor(lambda n: None, broker=broker, actor_name="fresh",
                               queue_name="fresh", priority=0, options={})
        broker.enqueue_many([actor.message(0)])
        client.script_flush()  # as after a failover to a server that never ran it
        sent = broker.enqueue_many([actor.message(n) for n in (1, 2, 3)])
        got = _fetch_all(broker, "fresh", 4)
        assert sorted(m.args[0] for m in got) == [0, 1, 2, 3]
        assert {m.message_id for m in sent} < {m.message_id for m in got}
    finally:
        broker.close()


def test_enqueue_many_raises_a_failed_enqueue_after_the_others_are_in(
    broker: WakingRedisBroker, redis_client: redis.Redis,
) -> None:
    recorder = _Recorder()
    broker.add_middleware(recorder)
    good = dramatiq.Actor(lambda: None, broker=broker, actor_name="good", queue_name="good",
                          priority=0, options={})
    bad = dramatiq.Actor(lambda: None, broker=broker, actor_name="bad", queue_name="bad",
                         priority=0, options={})
    redis_client.set(f"{broker.namespace}:bad", "not a list")  # its enqueue fails: WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        broker.enqueue_many([good.message(), bad.message(), good.message()])
    assert len(_fetch_all(broker, "good", 2)) == 2
    assert [signal for signal, _ in recorder.seen] == ["before"] * 3 + ["after"] * 2


def test_notify_many_on_another_broker_enqueues_one_message_at_a_time() -> None:
    broker = StubBroker()
    recorder = _Recorder()
    broker.add_middleware(recorder)
    broker.emit_after("process_boot")
    bus = _bus_with_two_subscribers(broker)
    positions: list[tuple[str, int | None]] = [(f"o{n}", n + 1) for n in range(40)]
    bus.notify_many("order", positions)
    assert broker.queues["totals"].qsize() == broker.queues["emails"].qsize() == 2
    assert [signal for signal, _ in recorder.seen] == ["before", "after"] * 4
