"""`async def` handlers given to the sync `Store.subscribe`: the in-memory bus awaits them on
a loop of its own, the Dramatiq bus on the event loop of Dramatiq's AsyncIO middleware.
Same order, retry and parking as plain handlers. (Real worker processes: test_processes.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

import dramatiq
import pytest
from apps.delivery_kit import Delivery, Recorder, assert_exactly_once_in_order
from conftest import ACCOUNT_EVENTS, Opened
from kit import wait_for, write_count

from es_workers import (
    AsyncInMemoryStorage,
    AsyncStore,
    Event,
    InMemoryEventBus,
    InMemoryStorage,
    RedisStorage,
    Store,
    admin,
)
from es_workers.event import is_async
from es_workers.workers.delivery import DeliveryOptions


class AsyncRecorder(Recorder):
    """Recorder's record, made from an `async def` handler; notes the loops it ran on."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.loops: set[int] = set()

    async def __call__(self, event: Event) -> None:  # type: ignore[override]
        self.loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        super().__call__(event)


def test_async_callables_are_told_from_plain_ones() -> None:
    async def function(event: Event) -> None: ...

    class Handler:
        async def handle(self, event: Event) -> None: ...

    assert is_async(function) and is_async(Handler().handle) and is_async(AsyncRecorder())
    assert not is_async(Recorder()) and not is_async(lambda event: None) and not is_async(print)


@pytest.fixture
def memory_store() -> Iterator[Store]:
    store = Store(InMemoryStorage(), events=ACCOUNT_EVENTS)
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    yield store
    store.close()
    thread.join(timeout=10)


def test_the_in_memory_bus_awaits_async_handlers_in_order_on_one_loop(
    memory_store: Store,
) -> None:
    recorder = AsyncRecorder()
    memory_store.subscribe("account", "balances", recorder)
    heads = {f"acc-{i}": write_count(memory_store, f"acc-{i}", 3) for i in range(4)}
    heads["acc-0"] = write_count(memory_store, "acc-0", 2)

    wait_for(lambda: recorder.has(heads), "every event handled")
    assert_exactly_once_in_order(recorder, heads)
    assert len(recorder.loops) == 1  # clients a handler keeps stay on their loop


def test_the_in_memory_bus_skips_a_failing_async_handlers_event_for_it_alone(
    memory_store: Store,
) -> None:
    fragile = AsyncRecorder(fail=lambda event: event.event_number == 2)
    sturdy = AsyncRecorder()
    memory_store.subscribe("account", "fragile", fragile)
    memory_store.subscribe("account", "sturdy", sturdy)
    heads = {"acc-1": write_count(memory_store, "acc-1", 3)}

    wait_for(lambda: sturdy.has(heads) and fragile.has(heads), "both handled acc-1 #3")
    assert fragile.by_entity() == {"acc-1": [1, 3]}
    assert sturdy.by_entity() == {"acc-1": [1, 2, 3]}


REQUEST: ContextVar[str] = ContextVar("request", default="none")


def test_an_async_handler_sees_the_context_of_the_thread_delivering_the_event() -> None:
    """Context variables set around a handler call (the event being handled, a trace)
    reach an async handler although it runs on the bus's own loop."""
    seen: list[str] = []

    async def handler(event: Event) -> None:
        seen.append(REQUEST.get())

    bus = InMemoryEventBus()
    bus.subscribe("account", "s", handler)
    event = Event("a1", "account", 1, datetime.now(UTC), Opened(owner="a"), "id", "id")
    try:
        for request in ("first", "second"):
            REQUEST.set(request)
            bus.write("account", [event])
    finally:
        bus.close()
    assert seen == ["first", "second"]


@pytest.fixture
def delivery(fast_storage: RedisStorage, broker: dramatiq.Broker) -> Iterator[Delivery]:
    made = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    yield made
    made.stop()


def test_dramatiq_runs_async_handlers_once_in_order_and_parks_a_failing_entity(
    delivery: Delivery,
) -> None:
    ordered = AsyncRecorder()
    fragile = AsyncRecorder(fail=lambda e: (e.entity_id, e.event_number) == ("acc-1", 3))
    delivery.store.subscribe("account", "ordered", ordered)
    delivery.store.subscribe("account", "fragile", fragile)
    heads = {f"acc-{i}": write_count(delivery.store, f"acc-{i}", 5) for i in range(4)}
    delivery.start_store()
    delivery.start_worker()

    wait_for(lambda: ordered.has(heads), "ordered to handle everything")
    wait_for(lambda: admin.parked(delivery.store, "fragile", "account"), "acc-1 parked")
    assert_exactly_once_in_order(ordered, heads)
    assert ordered.overlaps == 0 and len(ordered.loops) == 1
    (parked,) = admin.parked(delivery.store, "fragile", "account")
    assert (parked.entity_id, parked.event_number) == ("acc-1", 3)
    assert parked.error == "RuntimeError: poison acc-1 #3"
    wait_for(lambda: fragile.has({"acc-0": 5, "acc-2": 5, "acc-3": 5}), "fragile goes on")
    assert fragile.by_entity()["acc-1"] == [1, 2]


def test_an_async_handler_writing_through_an_async_store_records_its_cause(
    memory_store: Store,
) -> None:
    assert isinstance(memory_store.storage, InMemoryStorage)
    web = AsyncStore(AsyncInMemoryStorage(memory_store.storage), events=ACCOUNT_EVENTS)

    async def follow_up(event: Event) -> None:
        if event.entity_id == "a1":
            await web.open("account", "b1").write(Opened(owner="follow-up"))

    memory_store.subscribe("account", "follow-up", follow_up)
    cause = write_count(memory_store, "a1", 1)

    wait_for(lambda: list(memory_store.read("account", "b1")), "the follow-up event")
    (caused,) = memory_store.read("account", "b1")
    (first,) = memory_store.read("account", "a1")
    assert cause == 1 and caused.causation_id == first.store_event_id
    assert caused.correlation_id == first.correlation_id


def test_system_exit_and_keyboard_interrupt_from_an_async_handler_park_its_entity_only(
    delivery: Delivery,
) -> None:
    """asyncio lets these two out of a task, which would stop the loop every async handler
    of the process runs on: they are failed attempts of their entity, as from a function,
    and the loop goes on with the others."""
    raising: dict[str, type[BaseException]] = {"exits": SystemExit,
                                               "interrupts": KeyboardInterrupt}
    recorder = AsyncRecorder()

    async def handler(event: Event) -> None:
        if event.entity_id in raising:
            raise raising[event.entity_id](f"from {event.entity_id}")
        await recorder(event)

    delivery.store.subscribe("account", "balances", handler)
    heads = {entity_id: write_count(delivery.store, entity_id, 1)
             for entity_id in (*raising, "fine")}
    delivery.start_store()
    delivery.start_worker()

    wait_for(lambda: len(admin.parked(delivery.store, "balances", "account")) == 2,
             "exits and interrupts parked", timeout=10)
    heads["fine"] = write_count(delivery.store, "fine", 2)
    wait_for(lambda: recorder.has({"fine": heads["fine"]}), "fine's later events")
    parked = admin.parked(delivery.store, "balances", "account")
    assert {p.entity_id: p.error for p in parked} == {
        "exits": "SystemExit: from exits", "interrupts": "KeyboardInterrupt: from interrupts"}
    assert recorder.by_entity() == {"fine": [1, 2, 3]}


def test_an_async_handler_past_its_time_limit_is_cancelled_and_parks_its_entity(
    fast_storage: RedisStorage, broker: dramatiq.Broker
) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS,
                        options=DeliveryOptions(handler_time_limit_ms=200, max_attempts=1))
    cancelled = threading.Event()
    recorder = AsyncRecorder()

    async def handler(event: Event) -> None:
        if event.entity_id == "stuck":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        await recorder(event)

    delivery.store.subscribe("account", "balances", handler)
    for entity_id in ("stuck", "fine"):
        write_count(delivery.store, entity_id, 1)
    delivery.start_store()
    delivery.start_worker()
    try:
        wait_for(lambda: admin.parked(delivery.store, "balances", "account"), "stuck parked",
                 timeout=10)
        wait_for(lambda: recorder.has({"fine": 1}), "fine handled")
    finally:
        delivery.stop()
    (parked,) = admin.parked(delivery.store, "balances", "account")
    assert parked.entity_id == "stuck" and parked.error.startswith("HandlerTimeLimitExceeded")
    assert cancelled.is_set()
