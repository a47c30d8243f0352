"""Guarantee 10, one holder, in one process (publisher thread, Dramatiq worker threads, on
fakeredis, the real Redis and a cluster): a handler of one (subscriber, entity) never runs
while another instance of it runs, however long it takes (the lease is renewed while it
runs); a holder that lost its lease records nothing; a handler past its time limit is
stopped and counts as a failed attempt; no attempt starts before its backoff has passed,
however many notices arrive meanwhile; SystemExit, KeyboardInterrupt and GeneratorExit
from a handler are failed attempts of that entity only. (Real worker processes paused,
resumed and killed: test_processes_lease.py.)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise

import dramatiq
import pytest
import redis
from apps.delivery_kit import (
    Delivery,
    Recorder,
    assert_exactly_once_in_order,
    same_partition,
    stub_broker,
)
from conftest import ACCOUNT_EVENTS, delete_prefix, real_redis
from kit import wait_for, write_count
from servers import TcpProxy

from es_workers import Event, RedisStorage, Store, admin
from es_workers.ports import BUSY, NOTHING_TO_DO, READY, Failure
from es_workers.workers.delivery import DeliveryOptions

LEASE_MS = 300
"""A short lease, so that a slow handler outlives it several times within a second."""


@contextmanager
def notices_meanwhile(delivery: Delivery, entity_id: str, every_s: float = 0.01
                      ) -> Iterator[None]:
    """Sends notices for the entity from another thread while the block runs (as the
    publisher's sweep and new events would)."""
    stop = threading.Event()

    def send() -> None:
        number = 0
        while not stop.wait(every_s):
            number = number % 3 + 1
            delivery.bus.notify("account", entity_id, number)
            delivery.bus.notify("account", entity_id, None)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def parked_errors(store: Store, subscriber_id: str) -> dict[str, tuple[int, str, int]]:
    """Entity ID -> (event number, error, attempts) of the subscriber's parked entities."""
    return {p.entity_id: (p.event_number, p.error, p.attempts)
            for p in admin.parked(store, subscriber_id, "account")}


def behind(store: Store) -> int:
    return sum(s.events_behind for s in admin.status(store).subscribers)


def test_a_handler_three_times_the_lease_runs_once_at_a_time_and_is_checkpointed_once(
    fast_storage: RedisStorage, broker: dramatiq.Broker, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS,
                        options=DeliveryOptions(lock_ms=LEASE_MS))
    recorder = Recorder(delay=3 * LEASE_MS / 1000)
    delivery.store.subscribe("account", "slow", recorder)
    heads = {"acc-1": write_count(delivery.store, "acc-1", 2)}
    delivery.start_worker(threads=4)
    try:
        with notices_meanwhile(delivery, "acc-1"):
            wait_for(lambda: recorder.has(heads), "both slow events handled")
        wait_for(lambda: behind(delivery.store) == 0, "the checkpoint at the head")
    finally:
        delivery.stop()

    assert recorder.overlaps == 0, "the handler ran while another instance of it ran"
    assert_exactly_once_in_order(recorder, heads)
    assert "lost the lock" not in caplog.text


def test_a_holder_that_lost_its_lease_records_nothing_and_another_goes_on(
    fast_storage: RedisStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock of a running handler is gone (its lease ran out unseen: the process was
    paused, or cut off from Redis): another worker handles the entity; the old holder's
    failure afterwards is not counted (one attempt would park the entity) and it stops."""
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS,
                        options=DeliveryOptions(lock_ms=LEASE_MS, max_attempts=1))
    first_call, taken_over = threading.Event(), threading.Event()
    recorder = Recorder()

    def handler(event: Event) -> None:
        if event.event_number == 1 and not first_call.is_set():
            first_call.set()
            taken_over.wait(timeout=30)
            raise RuntimeError("the old holder fails after the takeover")
        recorder(event)
        if event.event_number == 3:
            taken_over.set()

    def lose_the_lock() -> None:
        pattern = f"{fast_storage.keys.prefix}:*:lock:balances:account:acc-1"
        (lock,) = fast_storage.client.scan_iter(match=pattern)
        fast_storage.client.delete(lock)

    delivery.store.subscribe("account", "balances", handler)
    write_count(delivery.store, "acc-1", 3)
    delivery.start_worker()
    try:
        delivery.bus.notify("account", "acc-1", 3)
        wait_for(first_call.is_set, "the first holder's handler to start")
        lose_the_lock()
        delivery.bus.notify("account", "acc-1", 3)
        wait_for(taken_over.is_set, "another worker to handle the entity")
        wait_for(lambda: "lost the lock" in caplog.text, "the old holder to stop")
        wait_for(lambda: behind(delivery.store) == 0, "the checkpoint at the head")
    finally:
        taken_over.set()
        delivery.stop()

    assert parked_errors(delivery.store, "balances") == {}
    assert recorder.by_entity() == {"acc-1": [1, 2, 3]}


@pytest.mark.servers
def test_a_holder_cut_off_from_redis_past_its_lease_stops_its_handler_before_another_starts(
    tcp_proxy: Callable[[tuple[str, int]], TcpProxy], caplog: pytest.LogCaptureFixture,
) -> None:
    """Worker "cut" reaches Redis through a proxy that goes down while its handler runs: it
    cannot renew the lease, so it stops the handler before the lease can run out; worker
    "other" (direct) then takes the entity over and handles it to its head. On the real
    Redis (the proxy forwards to it)."""
    direct = real_redis()
    options = direct.connection_pool.connection_kwargs
    proxy = tcp_proxy((options["host"], options["port"]))
    through_proxy = redis.Redis(host=proxy.address[0], port=proxy.port, db=options["db"],
                                socket_timeout=1, socket_connect_timeout=1)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    lease = DeliveryOptions(lock_ms=LEASE_MS)
    cut = Delivery(RedisStorage(through_proxy, prefix=prefix), stub_broker(),
                   events=ACCOUNT_EVENTS, options=lease)
    other = Delivery(RedisStorage(direct, prefix=prefix), stub_broker(),
                     events=ACCOUNT_EVENTS, options=lease)
    cut_started, stopped_at = threading.Event(), []
    recorder, first_starts = Recorder(), []

    def cut_handler(event: Event) -> None:
        cut_started.set()
        try:
            for _ in range(1000):  # 10 s, unless stopped
                time.sleep(0.01)
        except BaseException:
            stopped_at.append(time.monotonic())
            raise

    def other_handler(event: Event) -> None:
        if event.event_number == 1:
            first_starts.append(time.monotonic())
        recorder(event)

    cut.store.subscribe("account", "balances", cut_handler)
    other.store.subscribe("account", "balances", other_handler)
    heads = {"acc-1": write_count(other.store, "acc-1", 3)}
    cut.start_worker()
    other.start_worker()
    try:
        cut.bus.notify("account", "acc-1", 3)
        wait_for(cut_started.is_set, "cut's handler to start")
        proxy.down()
        try:
            wait_for(lambda: stopped_at, "cut to stop its handler", timeout=10)

            def send_other_a_notice() -> None:
                other.bus.notify("account", "acc-1", 3)

            wait_for(lambda: recorder.has(heads), "other to handle acc-1 to its head",
                     interval=0.05, check=send_other_a_notice)
        finally:
            proxy.up()
    finally:
        cut.stop()
        other.stop()
        delete_prefix(direct, prefix)

    assert stopped_at[0] < first_starts[0], "the handler ran in two workers at once"
    assert "lost the lock on account 'acc-1' during event 1" in caplog.text
    assert_exactly_once_in_order(recorder, heads)


def test_every_script_refuses_a_holder_whose_lease_ran_out(fast_storage: RedisStorage
                                                           ) -> None:
    """Checkpoint, renewal, failure and release all check the lock is still the caller's:
    once another worker took the entity over, the old holder changes nothing."""
    store = Store(fast_storage, events=ACCOUNT_EVENTS)
    write_count(store, "acc-1", 2)
    state = fast_storage.state
    e = state.entity("balances", "account", "acc-1")
    assert state.begin([e], [None], "old", 100, 10)[0].state == READY
    wait_for(lambda: state.begin([e], [None], "new", 60_000, 10)[0].state == READY,
             "the old lease to run out and another worker to take the entity")

    assert state.commit([e], [1], "old", 60_000, release=True)[0].lost
    assert state.renew([e], "old", 60_000) == [False]
    assert state.fail(e, "old", Failure(1, "RuntimeError: late", "", 10), 1).lost
    state.unlock([e], "old")
    assert (state.checkpoint(e), state.parked("balances", "account")) == (0, [])

    assert state.renew([e], "new", 60_000) == [True]  # still the new holder's
    assert not state.commit([e], [2], "new", 60_000, release=True)[0].lost
    assert state.checkpoint(e) == 2


def test_entities_of_several_partitions_are_begun_committed_renewed_and_released_together(
    fast_storage: RedisStorage,
) -> None:
    """One delivery may name entities of several partitions (a packed notice): each call
    takes them all (a script call per partition, one round trip) and answers in the order
    the entities were given, the lock checks as for one partition."""
    store = Store(fast_storage, events=ACCOUNT_EVENTS)
    state = fast_storage.state
    by_partition: dict[int, list[str]] = {}
    for i in range(1000):  # two entities in each of three partitions
        partition = fast_storage.keys.partition("account", f"acc-{i}")
        if partition in by_partition or len(by_partition) < 3:
            group = by_partition.setdefault(partition, [])
            if len(group) < 2:
                group.append(f"acc-{i}")
        if sum(len(g) for g in by_partition.values()) == 6:
            break
    ids = [g[0] for g in by_partition.values()] + [g[1] for g in by_partition.values()]
    heads = {entity_id: write_count(store, entity_id, 1 + n % 3)
             for n, entity_id in enumerate(ids)}
    entities = [state.entity("balances", "account", entity_id) for entity_id in ids]
    assert len({e.partition for e in entities}) == 3
    other = state.entity("balances", "account", ids[0])
    assert state.begin([other], [None], "other", 60_000, 10)[0].state == READY  # busy

    begun = state.begin(entities, [None] * 6, "mine", 60_000, 10)
    assert [b.state for b in begun] == [BUSY] + [READY] * 5
    assert [len(b.entries) for b in begun[1:]] == [heads[i] for i in ids[1:]]
    assert state.renew(entities, "mine", 60_000) == [False] + [True] * 5
    committed = state.commit(entities[1:], [heads[i] for i in ids[1:]], "mine", 60_000,
                             release=True)
    assert [c.lost for c in committed] == [False] * 5
    assert [state.checkpoint(e) for e in entities] == [0] + [heads[i] for i in ids[1:]]
    state.unlock(entities, "other")  # releases only the one "other" holds
    assert [b.state for b in state.begin(entities, [None] * 6, "again", 60_000, 10)] == [
        READY] + [NOTHING_TO_DO] * 5


def test_a_handler_past_its_time_limit_is_stopped_and_parks_its_entity_with_the_reason(
    fast_storage: RedisStorage, broker: dramatiq.Broker
) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS, options=DeliveryOptions(
        handler_time_limit_ms=200, max_attempts=2, min_backoff_ms=10, max_backoff_ms=20))
    recorder, stopped_by = Recorder(), []

    def handler(event: Event) -> None:
        if event.entity_id == "stuck":
            try:
                while True:  # until stopped
                    time.sleep(0.005)
            except BaseException as error:
                stopped_by.append(type(error).__name__)
                raise
        recorder(event)

    delivery.store.subscribe("account", "balances", handler)
    heads = {entity_id: write_count(delivery.store, entity_id, 2) for entity_id in ("stuck", "ok")}
    delivery.start_store()
    delivery.start_worker()
    try:
        wait_for(lambda: parked_errors(delivery.store, "balances"), "stuck parked", timeout=10)
        wait_for(lambda: recorder.has({"ok": 2}), "the other entity handled")
    finally:
        delivery.stop()

    (event_number, error, attempts), = parked_errors(delivery.store, "balances").values()
    assert (event_number, attempts) == (1, 2)
    assert error.startswith("HandlerTimeLimitExceeded: ") and "200 ms" in error
    assert stopped_by == ["HandlerTimeLimitExceeded"] * 2
    assert recorder.by_entity() == {"ok": [1, 2]}
    assert heads == {"stuck": 2, "ok": 2}


def test_no_attempt_starts_before_its_backoff_however_many_notices_arrive(
    fast_storage: RedisStorage, broker: dramatiq.Broker
) -> None:
    """flaky's first event fails three times while notices for it keep coming: each attempt
    waits its backoff (at least 80% of 300 ms: the jitter), its later events wait, another
    entity goes on meanwhile; the fourth attempt succeeds and the rest follow in order."""
    backoff_ms = 300
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS, options=DeliveryOptions(
        min_backoff_ms=backoff_ms, max_backoff_ms=backoff_ms, max_attempts=5))
    recorder, starts = Recorder(), []

    def handler(event: Event) -> None:
        if (event.entity_id, event.event_number) == ("flaky", 1):
            starts.append(time.monotonic())
            if len(starts) <= 3:
                raise RuntimeError(f"attempt {len(starts)} fails")
        recorder(event)

    delivery.store.subscribe("account", "balances", handler)
    heads = {"flaky": write_count(delivery.store, "flaky", 3)}
    delivery.start_store()
    delivery.start_worker()
    try:
        with notices_meanwhile(delivery, "flaky"):
            wait_for(lambda: starts, "the first attempt")
            heads["steady"] = write_count(delivery.store, "steady", 2)
            wait_for(lambda: recorder.has({"steady": 2}), "another entity handled meanwhile")
            assert "flaky" not in recorder.by_entity(), "flaky's later events did not wait"
            wait_for(lambda: recorder.has(heads), "flaky handled once its backoff passed",
                     timeout=10)
    finally:
        delivery.stop()

    gaps_ms = [round((later - earlier) * 1000) for earlier, later in pairwise(starts)]
    assert len(starts) == 4 and min(gaps_ms) >= 0.8 * backoff_ms, gaps_ms
    assert_exactly_once_in_order(recorder, heads)
    assert parked_errors(delivery.store, "balances") == {}


def test_system_exit_keyboard_interrupt_and_generator_exit_from_a_handler_park_its_entity_only(
    fast_storage: RedisStorage, broker: dramatiq.Broker
) -> None:
    """Raised by handler code (signals reach only a process's main thread, never a worker
    thread), they are failed attempts of that entity: parked with the reason, while a
    healthy entity of the same notice is handled and the worker goes on."""
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS, options=DeliveryOptions(
        max_attempts=2, min_backoff_ms=10, max_backoff_ms=20))
    exits, interrupts, closes, healthy = same_partition(fast_storage, 4)
    raising: dict[str, type[BaseException]] = {
        exits: SystemExit, interrupts: KeyboardInterrupt, closes: GeneratorExit}
    recorder = Recorder()

    def handler(event: Event) -> None:
        if event.entity_id in raising:
            raise raising[event.entity_id](f"from {event.entity_id}")
        recorder(event)

    delivery.store.subscribe("account", "balances", handler)
    heads = {entity_id: write_count(delivery.store, entity_id, 1) for entity_id in raising}
    heads[healthy] = write_count(delivery.store, healthy, 1)
    delivery.start_worker()
    try:
        delivery.bus.notify_many("account", list(heads.items()))
        wait_for(lambda: len(parked_errors(delivery.store, "balances")) == 3,
                 "the three entities parked", timeout=10)
        heads[healthy] = write_count(delivery.store, healthy, 1)
        delivery.bus.notify("account", healthy, heads[healthy])
        wait_for(lambda: recorder.has({healthy: 2}), "the healthy entity's events")
    finally:
        delivery.stop()

    assert parked_errors(delivery.store, "balances") == {
        entity_id: (1, f"{kind.__name__}: from {entity_id}", 2)
        for entity_id, kind in raising.items()
    }
    assert recorder.by_entity() == {healthy: [1, 2]}
