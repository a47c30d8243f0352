"""Fails loudly when a Dramatiq upgrade changes the private API es_workers relies on
(all of it in es_workers.workers.dramatiq_internals; pyproject pins dramatiq < 3)."""

from __future__ import annotations

import inspect
import types

import dramatiq
import dramatiq.cli
import fakeredis
from dramatiq.worker import ConsumerThread

from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.dramatiq_internals import (
    RedisConsumer,
    current_millis,
    dispatch_script,
    enqueue_call,
    has_cached_messages,
    held_until,
    redis_broker_scripts,
    stop_already_requested,
)


def test_redis_consumer_is_the_class_behind_consumer_class_with_the_expected_shape() -> None:
    assert issubclass(RedisConsumer, dramatiq.Consumer)
    parameters = list(inspect.signature(RedisConsumer.__init__).parameters)
    assert parameters == ["self", "broker", "queue_name", "prefetch", "timeout"]
    broker = WakingRedisBroker(client=fakeredis.FakeRedis())
    try:
        consumer = broker.consume("q", prefetch=2, timeout=10)
        assert isinstance(consumer, RedisConsumer)
        # The attributes the waking consumer reads.
        assert consumer.queue_name == "q"
        assert consumer.prefetch == 2
        assert consumer.outstanding_message_count == 0
        consumer.close()
    finally:
        broker.close()


def test_enqueue_call_passes_the_dispatch_script_what_redis_broker_enqueue_does() -> None:
    broker = WakingRedisBroker(client=fakeredis.FakeRedis(), maintenance_chance=0)
    calls: list[tuple[list[object], list[object]]] = []

    class Recording:
        sha = broker.scripts["dispatch"].sha

        def __call__(self, args: list[object], keys: list[object]) -> None:
            calls.append((keys, args))

    try:
        broker.scripts["dispatch"] = Recording()
        broker.do_enqueue("q", "message-id", b"data")
        sha, arguments = enqueue_call(broker, "q", "message-id", b"data")
        [(keys, args)] = calls
        assert sha == Recording.sha
        assert arguments[:1] == keys == [broker.namespace]
        # All but the timestamp (the clock moved): [command, timestamp, queue, ...]
        assert arguments[1] == args[0] == "enqueue"
        assert arguments[3:] == args[2:]
        assert isinstance(arguments[2], int) and isinstance(args[1], int)
        assert "enqueue" in dispatch_script(broker)
    finally:
        broker.close()


def test_the_broker_scripts_are_there_to_preload() -> None:
    scripts = redis_broker_scripts()
    assert scripts
    assert all(isinstance(script, str) and script.startswith("--") for script in scripts)
    assert any("redis.call" in script for script in scripts)


def _worker_sigterm_handler() -> types.FunctionType:
    """Dramatiq's worker-process SIGTERM handler, rebuilt from worker_process' code."""
    nested = [
        const for const in dramatiq.cli.worker_process.__code__.co_consts
        if isinstance(const, types.CodeType) and const.co_name == "termhandler"
    ]
    assert len(nested) == 1, "dramatiq.cli.worker_process no longer defines termhandler"
    return nested[0]  # type: ignore[return-value]


def test_dramatiq_worker_sigterm_handler_still_closes_over_running() -> None:
    code = _worker_sigterm_handler()
    assert "running" in code.co_freevars


def test_stop_already_requested_reads_the_running_flag() -> None:
    def make(running: bool) -> object:
        def termhandler(signum: int, frame: object) -> None:
            nonlocal running
            running = not running

        return termhandler

    assert stop_already_requested(make(False))
    assert not stop_already_requested(make(True))
    assert not stop_already_requested(print)  # no closure at all


def test_has_cached_messages_reads_the_consumers_prefetched_messages() -> None:
    broker = WakingRedisBroker(client=fakeredis.FakeRedis())
    try:
        consumer = broker.consume("q", prefetch=2, timeout=10)
        assert consumer.message_cache == [] and not has_cached_messages(consumer)
        consumer.message_cache = [b"{}"]
        assert has_cached_messages(consumer)
        consumer.close()
    finally:
        broker.close()


def test_the_consumer_thread_holds_messages_with_an_eta_and_moves_them_after_each_next() -> None:
    # What the waking consumer's eta bound relies on: a message with an eta is held by the
    # consumer thread, which moves the due ones after each return of its consumer.
    assert '"eta" in message.options' in inspect.getsource(ConsumerThread.handle_message)
    run = inspect.getsource(ConsumerThread.run)
    loop = run[run.index("for message in self.consumer:"):]
    assert "self.handle_delayed_messages()" in loop
    assert "current_millis()" in inspect.getsource(ConsumerThread.handle_delayed_messages)


def test_held_until_reads_the_eta_of_a_delayed_message() -> None:
    broker = WakingRedisBroker(client=fakeredis.FakeRedis())
    try:
        actor = dramatiq.Actor(lambda: None, broker=broker, actor_name="a", queue_name="a",
                               priority=0, options={})
        before = current_millis()
        eta = held_until(broker.enqueue(actor.message(), delay=500))
        assert eta is not None and before + 500 <= eta <= current_millis() + 500
        assert held_until(broker.enqueue(actor.message())) is None
    finally:
        broker.close()
