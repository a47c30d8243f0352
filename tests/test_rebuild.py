"""Rebuilding a subscriber's read model while the app runs (`store.rebuild`): on fakeredis, a
real Redis and a Redis Cluster with a Dramatiq worker and a publisher in this process, and
on the in-memory bus. Real processes are in test_rebuild_processes.py.

The read model is a bank's balances, idempotent as handlers must be (it ignores an event at
or below the last one it applied) and strict about order (an event that skips one is
recorded as a gap): after a rebuild with a writer running the whole time, it must equal
what the events say, every entity handed over from event 1, and another subscriber must
not have been handed anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import random
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType

import dramatiq
import pytest
import redis
from apps.bank_kit import ACCOUNTS, Writer, amount, balances_of, heads_of, write
from apps.delivery_kit import Delivery, Recorder, assert_exactly_once_in_order
from conftest import ACCOUNT_EVENTS, Deposited, Withdrawn, client_beside
from kit import wait_for

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    ConfigurationError,
    Event,
    InMemoryStorage,
    RebuildError,
    RedisStorage,
    Store,
    SubscriberError,
    UnknownNameError,
    admin,
)
from es_workers.health import Thresholds, breaches
from es_workers.redis.publisher import Publisher, PublisherOptions


class Balances:
    """A read model: balance per account, the last event applied to each, and what a
    rebuild must never see (handlers running while it resets, events out of order)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.balance: dict[str, int] = {}
        self.applied: dict[str, int] = {}
        self.gaps: list[tuple[str, int, int]] = []
        self.running = 0
        self.resets = 0
        self.running_at_reset: list[int] = []
        self.handled_while_resetting = 0
        self.resetting = False
        self.in_reset: Callable[[], None] = lambda: None  # a test's probe inside the hook

    def handle(self, event: Event) -> None:
        with self.lock:
            self.running += 1
            self.handled_while_resetting += self.resetting
        try:
            threading.Event().wait(0.001)  # handlers in flight when the rebuild starts
            with self.lock:
                applied = self.applied.get(event.entity_id, 0)
                if event.event_number <= applied:
                    return  # a repeated delivery
                if event.event_number != applied + 1:
                    self.gaps.append((event.entity_id, applied, event.event_number))
                self.balance[event.entity_id] = self.balance.get(event.entity_id, 0) + amount(
                    event)
                self.applied[event.entity_id] = event.event_number
        finally:
            with self.lock:
                self.running -= 1

    def reset(self) -> None:
        with self.lock:
            self.running_at_reset.append(self.running)
            self.resetting = True
        try:
            self.in_reset()
            threading.Event().wait(0.05)  # a handler that slipped past the pause shows here
            with self.lock:
                self.balance.clear()
                self.applied.clear()
                self.resets += 1
        finally:
            with self.lock:
                self.resetting = False

    def caught_up(self, heads: dict[str, int]) -> bool:
        with self.lock:
            return all(self.applied.get(a, 0) >= head for a, head in heads.items())


@pytest.fixture
def delivery(fast_storage: RedisStorage, broker: dramatiq.Broker) -> Iterator[Delivery]:
    made = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    yield made
    made.stop()


def subscribe(store: Store) -> tuple[Balances, Recorder]:
    model, audit = Balances(), Recorder()
    store.subscribe("account", "balances", model.handle, reset=model.reset)
    store.subscribe("account", "audit", audit)
    return model, audit


def assert_rebuilt(store: Store, model: Balances, audit: Recorder) -> None:
    """The read model says what the events say; the other subscriber got each event once."""
    heads = heads_of(store)
    wait_for(lambda: model.caught_up(heads), "the rebuilt read model to catch up")
    wait_for(lambda: audit.has(heads), "audit to catch up")
    assert model.balance == balances_of(store)
    assert model.gaps == []
    assert model.resets == 1 and model.running_at_reset == [0]
    assert model.handled_while_resetting == 0
    assert_exactly_once_in_order(audit, heads)


def test_rebuild_with_a_writer_running_leaves_the_read_model_equal_to_the_events(
    delivery: Delivery,
) -> None:
    model, audit = subscribe(delivery.store)
    delivery.start_store()
    delivery.start_worker()
    with Writer(delivery.store) as writer:
        wait_for(lambda: sum(model.applied.values()) >= 60, "some history handled")
        progress: list[int] = []

        assert delivery.store.rebuild("balances", timeout=10, progress=progress.append) == 5

        assert progress == [5]
        written = writer.written
        wait_for(lambda: writer.written >= written + 30, "events written after the rebuild")
    assert_rebuilt(delivery.store, model, audit)
    status = admin.status(delivery.store)
    assert not any(s.paused or s.rebuild for s in status.subscribers)


def test_events_written_while_paused_are_handled_after_the_history(delivery: Delivery) -> None:
    model, audit = subscribe(delivery.store)
    for account in ACCOUNTS:
        write(delivery.store, account, Deposited(amount=10))
    delivery.start_store()
    delivery.start_worker()
    wait_for(lambda: model.caught_up(heads_of(delivery.store)), "the history handled")
    in_hook, release = threading.Event(), threading.Event()

    def hold() -> None:
        in_hook.set()
        assert release.wait(30)

    model.in_reset = hold
    rebuilding = threading.Thread(target=delivery.store.rebuild, args=("balances",))
    rebuilding.start()
    assert in_hook.wait(30)
    status = admin.status(delivery.store)
    paused = {s.subscriber_id: s for s in status.subscribers}
    assert paused["balances"].paused and not paused["audit"].paused
    assert paused["balances"].rebuild is not None
    assert paused["balances"].rebuild.stage == "reset hook"
    as_json = {s["subscriber_id"]: s for s in status.to_dict()["subscribers"]}  # --json
    assert as_json["balances"]["paused"] and as_json["balances"]["rebuild"]["by"]
    for account in ACCOUNTS:  # written while balances is paused: audit handles them
        write(delivery.store, account, Withdrawn(amount=3), Deposited(amount=4))
    wait_for(lambda: audit.has(heads_of(delivery.store)), "audit to handle the new events")
    assert model.handled_while_resetting == 0

    release.set()
    rebuilding.join(timeout=30)
    assert_rebuilt(delivery.store, model, audit)


def test_rebuild_waits_for_running_handlers_and_gives_up_after_its_timeout_changing_nothing(
    delivery: Delivery,
) -> None:
    started, release = threading.Event(), threading.Event()
    resets: list[int] = []

    def slow(event: Event) -> None:
        if event.entity_id == "slow":
            started.set()
            assert release.wait(30)

    delivery.store.subscribe("account", "balances", slow, reset=lambda: resets.append(1))
    delivery.start_store()
    delivery.start_worker()
    write(delivery.store, "slow", Deposited(amount=1))
    assert started.wait(30)

    with pytest.raises(RebuildError, match=r"1 handlers of 'balances' still running after "
                       r"0.3 s \(account 'slow'\); nothing was reset"):
        delivery.store.rebuild("balances", timeout=0.3)

    assert resets == []
    (status,) = admin.status(delivery.store).subscribers
    assert not status.paused and status.rebuild is None
    release.set()
    assert delivery.store.rebuild("balances", timeout=30) == 1
    assert resets == [1]


def test_a_second_rebuild_is_refused_while_one_runs(delivery: Delivery) -> None:
    model, _ = subscribe(delivery.store)
    in_hook, release = threading.Event(), threading.Event()

    def hold() -> None:
        in_hook.set()
        assert release.wait(30)

    model.in_reset = hold
    first = threading.Thread(target=delivery.store.rebuild, args=("balances",))
    first.start()
    assert in_hook.wait(30)
    try:
        with pytest.raises(RebuildError, match=r"'balances' is being rebuilt by .*:\d+: try "
                           "again once it is done"):
            delivery.store.rebuild("balances")
    finally:
        release.set()
        first.join(timeout=30)
    assert model.resets == 1


def test_a_rebuild_that_fails_halfway_shows_in_status_and_runs_again(
    delivery: Delivery,
) -> None:
    model, audit = subscribe(delivery.store)
    for account in ACCOUNTS:
        write(delivery.store, account, Deposited(amount=7))
    delivery.start_store()
    delivery.start_worker()
    wait_for(lambda: model.caught_up(heads_of(delivery.store)), "the history handled")

    def broken() -> None:
        raise OSError("read model unreachable")

    model.in_reset = broken
    with pytest.raises(RebuildError, match=r"rebuilding 'balances' failed after it was "
                       r"started over \(OSError: read model unreachable\).*run the rebuild "
                       "again"):
        delivery.store.rebuild("balances")

    status = {s.subscriber_id: s for s in admin.status(delivery.store).subscribers}
    assert not status["balances"].paused  # the workers go on...
    assert status["balances"].rebuild is not None  # ...and status says it is unfinished
    assert status["balances"].rebuild.stage == "reset hook"
    assert status["audit"].rebuild is None
    assert "balances: rebuild interrupted; run es-workers rebuild again" in breaches(
        admin.status(delivery.store), Thresholds())

    model.in_reset = lambda: None
    model.running_at_reset.clear()
    delivery.store.rebuild("balances")
    assert_rebuilt(delivery.store, model, audit)
    assert all(s.rebuild is None for s in admin.status(delivery.store).subscribers)


def test_only_a_known_subscriber_with_a_reset_hook_can_be_rebuilt(delivery: Delivery) -> None:
    delivery.store.subscribe("account", "audit", Recorder())
    hook = Balances().reset
    delivery.store.subscribe("account", "balances", Recorder(), reset=hook)
    with pytest.raises(ConfigurationError, match=r"subscriber 'audit' has no reset hook, so "
                       r"it cannot be rebuilt: declare one .*reset="):
        delivery.store.rebuild("audit")
    with pytest.raises(UnknownNameError, match=r"subscriber 'nobody' is not registered in "
                       r"this app: known subscribers 'audit', 'balances'"):
        delivery.store.rebuild("nobody")
    for entity_type in ("other", "third"):
        delivery.store.storage.register(entity_type, *ACCOUNT_EVENTS["account"])
    delivery.store.subscribe("other", "balances", Recorder(), reset=hook)  # the same: fine
    with pytest.raises(SubscriberError, match="'balances' already has a reset hook"):
        delivery.store.subscribe("third", "balances", Recorder(), reset=lambda: None)


@pytest.mark.anyio
async def test_async_store_rebuilds_calling_an_async_reset_hook_on_its_loop(
    delivery: Delivery, redis_client: redis.Redis, request: pytest.FixtureRequest,
) -> None:
    model, audit = Balances(), Recorder()
    loops: list[asyncio.AbstractEventLoop] = []

    async def reset() -> None:
        loops.append(asyncio.get_running_loop())
        model.reset()

    delivery.store.subscribe("account", "balances", model.handle, reset=reset)
    delivery.store.subscribe("account", "audit", audit)
    for account in ACCOUNTS:
        write(delivery.store, account, Deposited(amount=5))
    delivery.start_store()
    delivery.start_worker()
    storage = AsyncRedisStorage(
        client_beside(redis_client, request, decode_responses=False, use_asyncio=True),
        prefix=delivery.storage.keys.prefix,
    )
    async with AsyncStore(storage, bus=delivery.bus, events=ACCOUNT_EVENTS) as store:
        assert await store.rebuild("balances") == 5
    assert loops == [asyncio.get_running_loop()]
    await asyncio.to_thread(assert_rebuilt, delivery.store, model, audit)


def test_the_in_memory_bus_rebuilds_with_a_writer_running() -> None:
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    model, audit = subscribe(store)
    publishing = threading.Thread(target=store.start, daemon=True)
    publishing.start()
    try:
        with Writer(store) as writer:
            wait_for(lambda: sum(model.applied.values()) >= 60, "some history handled")
            assert store.rebuild("balances") == 5
            written = writer.written
            wait_for(lambda: writer.written >= written + 30, "events written after it")
        assert_rebuilt(store, model, audit)
    finally:
        store.close()
        publishing.join(timeout=10)


@pytest.fixture
def bank(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/bank.py on the embedded Redis, under a prefix of its own."""
    for name in list(os.environ):
        if name.startswith("ES_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ES_PREFIX", f"t-{uuid.uuid4().hex[:10]}")
    sys.modules.pop("es_workers.examples.bank", None)
    module = importlib.import_module("es_workers.examples.bank")
    yield module
    module.store.close()
    sys.modules.pop("es_workers.examples.bank", None)


def test_the_bank_example_rebuilds_its_balances_while_money_moves(bank: ModuleType) -> None:
    store = bank.store
    stop = threading.Event()
    publisher = threading.Thread(target=Publisher(
        store.storage, store.bus, PublisherOptions(block_ms=10, sweep_every_ms=100)).run,
        args=(stop,), daemon=True)
    worker = dramatiq.Worker(store.bus.broker, worker_timeout=20, worker_threads=4)
    publisher.start()
    worker.start()
    rng = random.Random(5)
    rebuilt_from: list[int] = []
    try:
        for account in ACCOUNTS:
            bank.open_account(account, account)
            bank.deposit(account, 100)
        for n in range(120):
            if n == 40:  # the rest is written while the rebuild runs
                rebuilding = threading.Thread(
                    target=lambda: rebuilt_from.append(store.rebuild("balances")))
                rebuilding.start()
            account, other = rng.sample(ACCOUNTS, 2)
            amount = rng.randint(1, 30)
            with contextlib.suppress(bank.BankError):  # a withdrawal beyond the balance
                match n % 3:
                    case 0:
                        bank.deposit(account, amount)
                    case 1:
                        bank.withdraw(account, amount)
                    case 2:
                        bank.transfer(account, other, amount, wait_s=None)
        rebuilding.join(timeout=30)
        assert rebuilt_from == [5]

        def rebuilt() -> bool:  # credits of transfers are written as the workers go
            return bank.balances() == {a: bank.account(a).balance for a in ACCOUNTS}

        wait_for(rebuilt, "the balances read model to say what the events say")
    finally:
        stop.set()
        publisher.join(timeout=10)
        worker.stop()
