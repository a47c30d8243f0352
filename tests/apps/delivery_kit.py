"""Helpers for the delivery tests: a Store wired to Dramatiq with its publisher in a thread
and a Dramatiq worker in this process, and a recording subscriber (waiting and writing
helpers are in kit.py).

Option values are small so that retries, claims and sweeps happen within a second.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.stub import StubBroker
from kit import wait_for, write_count

from es_workers import Content, Event, RedisStorage, Store
from es_workers.redis.publisher import Publisher, PublisherOptions
from es_workers.upgrade import EventUpgrade
from es_workers.workers.broker import WakingRedisBroker
from es_workers.workers.bus import DramatiqEventBus
from es_workers.workers.delivery import DeliveryOptions, Notice

FAST_DELIVERY = DeliveryOptions(min_backoff_ms=10, max_backoff_ms=50, lock_ms=2000)
FAST_PUBLISHER = PublisherOptions(
    claim_idle_ms=200, claim_every_ms=100, sweep_every_ms=100, block_ms=50, redrive_after_ms=300
)


class Recorder:
    """A subscriber's handler: records each call, the calls running at once per entity
    (`overlaps` counts calls that started while another ran for the same entity) and the
    most calls running at once over all entities."""

    def __init__(
        self,
        *,
        fail: Callable[[Event], bool] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.fail = fail
        self.delay = delay
        self.calls: list[tuple[str, int]] = []
        self.contents: dict[str, list[Content]] = defaultdict(list)
        self.overlaps = 0
        self.most_at_once = 0
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._running[event.entity_id]:
                self.overlaps += 1
            self._running[event.entity_id] += 1
            self.most_at_once = max(self.most_at_once, sum(self._running.values()))
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.fail is not None and self.fail(event):
                raise RuntimeError(f"poison {event.entity_id} #{event.event_number}")
            with self._lock:
                self.calls.append((event.entity_id, event.event_number))
                self.contents[event.entity_id].append(event.content)
        finally:
            with self._lock:
                self._running[event.entity_id] -= 1

    def by_entity(self) -> dict[str, list[int]]:
        with self._lock:
            numbers: dict[str, list[int]] = defaultdict(list)
            for entity_id, number in self.calls:
                numbers[entity_id].append(number)
            return dict(numbers)

    def count(self) -> int:
        with self._lock:
            return len(self.calls)

    def has(self, heads: Mapping[str, int]) -> bool:
        """True once every entity was handled up to its head."""
        seen = self.by_entity()
        return all(seen.get(entity_id, [0])[-1] >= head for entity_id, head in heads.items())


def assert_exactly_once_in_order(recorder: Recorder, heads: Mapping[str, int]) -> None:
    """Every event 1..head of every entity handled once, in event-number order."""
    seen = recorder.by_entity()
    wrong = {
        entity_id: seen.get(entity_id, [])
        for entity_id, head in heads.items()
        if seen.get(entity_id, []) != list(range(1, head + 1))
    }
    some = dict(list(wrong.items())[:5])
    assert not wrong, f"{len(wrong)} entities not handled exactly 1..head in order: {some}"
    assert set(seen) <= set(heads), f"handled unknown entities {set(seen) - set(heads)}"


def same_partition(storage: RedisStorage, count: int) -> list[str]:
    """`count` entity IDs of one partition: one notice names them all."""
    ids = (f"acc-{i}" for i in range(100_000))
    return [i for i in ids if storage.keys.partition("account", i) == 0][:count]


class FlakyStubBroker(StubBroker):
    """A StubBroker whose enqueue fails with ConnectionError while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.refused = 0

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        if self.down.is_set():
            self.refused += 1
            raise ConnectionError("broker down (test)")
        return super().enqueue(message, delay=delay)


def stub_broker() -> StubBroker:
    broker = FlakyStubBroker()
    broker.emit_after("process_boot")
    return broker


@contextmanager
def redis_broker(client: redis.Redis, backend: str, url: str) -> Iterator[dramatiq.Broker]:
    """The broker users get (WakingRedisBroker) beside the test's storage: on the same
    fakeredis server, or on the real Redis at `url` under a namespace of its own (its keys
    are deleted afterwards)."""
    if backend == "fakeredis":
        import fakeredis

        server = client.connection_pool.connection_kwargs["server"]
        broker = WakingRedisBroker(client=fakeredis.FakeRedis(server=server))
        try:
            yield broker
        finally:
            broker.close()
        return
    # On the real Redis, or beside a cluster (where Dramatiq's broker cannot run) on the
    # standalone Redis at `url`, as ES_BROKER_URL=redis://... would have it.
    namespace = f"t-dq-{uuid.uuid4().hex[:12]}"
    broker = WakingRedisBroker(url=url, namespace=namespace)
    try:
        yield broker
    finally:
        broker.close()
        with redis.Redis.from_url(url) as server:
            keys = list(server.scan_iter(f"{namespace}:*", count=1000))
            if keys:
                server.delete(*keys)


class Delivery:
    """A Store with a DramatiqEventBus; its publisher runs in a thread and a Dramatiq worker
    in this process, both stopped by `stop()`."""

    def __init__(
        self,
        storage: RedisStorage,
        broker: dramatiq.Broker,
        *,
        events: Mapping[str, Sequence[type[Content]]],
        upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
        options: DeliveryOptions = FAST_DELIVERY,
    ) -> None:
        self.storage = storage
        self.broker = broker
        self._done_lock = threading.Lock()
        self.notices_done = 0  # notices (actor messages) the worker has finished with
        self.bus = DramatiqEventBus(
            broker, options=options, max_backoff_ms=200, observer=self._notice_done
        )
        self.store = Store(storage, bus=self.bus, events=events, upgrades=upgrades)
        self.worker: dramatiq.Worker | None = None
        self._publishers: list[tuple[threading.Thread, threading.Event]] = []
        self._started: threading.Thread | None = None

    def _notice_done(self, notice: Notice) -> None:
        with self._done_lock:
            self.notices_done += 1

    def done(self) -> int:
        with self._done_lock:
            return self.notices_done

    def start_worker(self, threads: int = 4) -> None:
        self.worker = dramatiq.Worker(self.broker, worker_timeout=10, worker_threads=threads)
        self.worker.start()

    def start_store(self) -> None:
        """Runs `store.start()` (the storage's own publisher) in a thread until `stop()`."""
        self._started = threading.Thread(target=self.store.start, daemon=True)
        self._started.start()

    def start_publisher(self, options: PublisherOptions = FAST_PUBLISHER) -> Publisher:
        """Runs one more publisher in a thread (several may run at once)."""
        publisher = Publisher(self.storage, self.bus, options)
        stop = threading.Event()
        thread = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
        thread.start()
        self._publishers.append((thread, stop))
        return publisher

    def stop_publishers(self) -> None:
        for thread, stop in self._publishers:
            stop.set()
            thread.join(timeout=10)
        self._publishers.clear()

    def stop(self) -> None:
        self.stop_publishers()
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.store.close()  # stops start() and closes the broker
        if self._started is not None:
            self._started.join(timeout=10)
            self._started = None


class EnqueueCounter(dramatiq.Middleware):
    """Counts the messages a broker was handed (Dramatiq's public `after_enqueue` hook)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        with self._lock:
            self.count += 1


def check_quiet_while_no_worker_runs(delivery: Delivery, records: Callable[[], list[str]]
                                     ) -> None:
    """The publisher runs and no worker does: a notice waiting in the queue is not sent
    again (the queue stays as the writes left it), the log says so in a few lines (not one
    per entity and round), and once a worker starts every event is handled once, in order.
    `records`: the publisher's log lines so far."""
    from es_workers import admin

    counter = EnqueueCounter()
    delivery.broker.add_middleware(counter)
    recorder = Recorder()
    delivery.store.subscribe("account", "balances", recorder)
    publisher = delivery.start_publisher()
    sweeps = [0]
    sweep = publisher.sweep

    def counted() -> None:
        sweep()
        sweeps[0] += 1

    publisher.sweep = counted  # type: ignore[method-assign]
    heads = {}
    for i in range(10):  # two appends each
        write_count(delivery.store, f"acc-{i}", 1)
        heads[f"acc-{i}"] = write_count(delivery.store, f"acc-{i}", 1)
    wait_for(lambda: delivery.storage.outbox_backlog() == 0
             and admin.status(delivery.store).subscribers[0].caught_up,
             "the writes relayed and the history handed over")
    sent = counter.count
    assert sent <= 10 * 3, f"{sent} messages for 10 entities"
    wait_for(lambda: any("wait in its queue" in line for line in records()),
             "the publisher to see the notices wait in the queue", timeout=30)
    # Ten more redrive periods, counted in the publisher's sweeps (the round that re-sends):
    # each used to re-send every notice again.
    rounds = 10 * FAST_PUBLISHER.redrive_after_ms // FAST_PUBLISHER.sweep_every_ms
    seen = sweeps[0]
    wait_for(lambda: sweeps[0] >= seen + rounds, f"{rounds} more sweeps", timeout=30)
    assert counter.count == sent, "nothing is sent again while no worker runs"
    lines = [line for line in records() if "notices" in line]
    assert len(lines) == 1, f"the log says it once per outage, not per entity: {lines}"
    assert "10 notices wait in its queue" in lines[0]

    delivery.start_worker()
    wait_for(lambda: recorder.has(heads), "every event once a worker runs")
    wait_for(lambda: any("take its notices again" in line for line in records()),
             "one line when the queue moves again")
    assert_exactly_once_in_order(recorder, heads)
