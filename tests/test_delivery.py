"""Guarantee 4 (and 6, 7) end to end, in one process: publisher thread, Dramatiq worker
threads, RedisBroker on the same fakeredis server or on the real Redis.

Every subscriber sees every event of its entity type once, in event-number order per entity,
in parallel across entities; duplicate and old notices are skipped; a failing handler parks
its entity for its subscriber only; a late subscriber is handed the history; upgrades apply
to delivered events as to read ones.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import dramatiq
import pytest
import redis
from apps.delivery_kit import (
    FAST_PUBLISHER,
    Delivery,
    EnqueueCounter,
    Recorder,
    assert_exactly_once_in_order,
    redis_broker,
    same_partition,
    stub_broker,
)
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened, Withdrawn
from kit import wait_for, write_at_head, write_count

from es_workers import Content, Event, RedisStorage, Store, admin
from es_workers.workers import delivery as delivery_module
from es_workers.workers.delivery import DeliveryOptions


@pytest.fixture
def delivery(fast_storage: RedisStorage, broker: dramatiq.Broker) -> Iterator[Delivery]:
    made = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    yield made
    made.stop()


def write(delivery: Delivery, entity_id: str, count: int) -> int:
    return write_count(delivery.store, entity_id, count)


def subscribe(delivery: Delivery, *names: str, **recorder: object) -> list[Recorder]:
    recorders = [Recorder(**recorder) for _ in names]  # type: ignore[arg-type]
    for name, handler in zip(names, recorders, strict=True):
        delivery.store.subscribe("account", name, handler)
    return recorders


def settled(delivery: Delivery) -> bool:
    """Nothing left to relay and no subscriber behind."""
    status = admin.status(delivery.store)
    return status.outbox_backlog == 0 and all(s.events_behind == 0 for s in status.subscribers)


def test_every_subscriber_handles_every_event_once_in_order_per_entity(
    delivery: Delivery,
) -> None:
    recorders = subscribe(delivery, "balances", "audit", "mailer")
    rng = random.Random(7)
    heads: dict[str, int] = {}
    # Half the entities have history before the publisher and the worker start.
    for i in range(25):
        heads[f"acc-{i}"] = write(delivery, f"acc-{i}", 5)
    delivery.start_store()
    delivery.start_worker(threads=4)
    # The rest is written in small batches while delivery runs, old and new entities mixed.
    while any(heads.get(f"acc-{i}", 0) < 10 for i in range(50)):
        i = rng.randrange(50)
        head = heads.get(f"acc-{i}", 0)
        if head < 10:
            heads[f"acc-{i}"] = write(delivery, f"acc-{i}", min(10 - head, rng.randint(1, 3)))

    wait_for(lambda: all(r.has(heads) for r in recorders), "all 500 events x 3 subscribers")
    wait_for(lambda: settled(delivery), "status to show no backlog and no lag")
    for recorder in recorders:
        assert_exactly_once_in_order(recorder, heads)
        assert recorder.overlaps == 0


def test_duplicate_and_old_notices_do_not_call_the_handler_again(delivery: Delivery) -> None:
    (recorder,) = subscribe(delivery, "balances")
    heads = {f"acc-{i}": write(delivery, f"acc-{i}", 4) for i in range(10)}
    delivery.start_store()
    delivery.start_worker()
    wait_for(lambda: recorder.has(heads), "the history to be handled")
    wait_for(lambda: settled(delivery), "no lag")
    handled = recorder.count()

    before = delivery.done()
    actor = delivery.bus.actor("balances")
    for entity_id, head in heads.items():
        delivery.bus.notify("account", entity_id, head)  # a duplicate
        delivery.bus.notify("account", entity_id, 1)  # an old notice
        delivery.bus.notify("account", entity_id, None, ["balances"])  # "up to the head"
        actor.send("account", entity_id, head - 1)  # straight to the actor
    wait_for(lambda: delivery.done() >= before + 4 * len(heads), "the 40 notices to be done")

    assert recorder.count() == handled
    assert_exactly_once_in_order(recorder, heads)


def test_notice_ahead_of_the_checkpoint_handles_every_event_in_between(
    delivery: Delivery,
) -> None:
    (recorder,) = subscribe(delivery, "balances")
    head = write(delivery, "acc-1", 7)  # no publisher runs: nobody is told
    delivery.start_worker()

    delivery.bus.notify("account", "acc-1", 7)

    wait_for(lambda: recorder.has({"acc-1": head}), "events 1..7")
    assert recorder.by_entity() == {"acc-1": [1, 2, 3, 4, 5, 6, 7]}


def test_concurrent_notices_for_one_entity_never_run_its_handler_at_once(
    fast_storage: RedisStorage,
) -> None:
    """Many notices for one entity on 8 worker threads: one at a time, in order, once;
    other entities are handled in parallel meanwhile."""
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS)
    (recorder,) = subscribe(delivery, "slow", delay=0.003)
    heads = {"hot": write(delivery, "hot", 20)}
    heads.update({f"cold-{i}": write(delivery, f"cold-{i}", 3) for i in range(12)})
    delivery.start_worker(threads=8)
    try:
        for number in [*range(1, 21), None, *range(20, 0, -1)]:
            delivery.bus.notify("account", "hot", number)
        for entity_id, head in heads.items():
            if entity_id != "hot":
                delivery.bus.notify("account", entity_id, head)
        wait_for(lambda: recorder.has(heads), "every entity handled")
    finally:
        delivery.stop()

    assert recorder.overlaps == 0
    assert_exactly_once_in_order(recorder, heads)
    assert recorder.most_at_once > 1, "entities should be handled in parallel"


def test_poison_event_parks_that_entity_for_that_subscriber_only(delivery: Delivery) -> None:
    poison = {("acc-1", 3), ("acc-2", 4)}
    (fragile,) = subscribe(
        delivery, "fragile", fail=lambda e: (e.entity_id, e.event_number) in poison
    )
    (sturdy,) = subscribe(delivery, "sturdy")
    heads = {f"acc-{i}": write(delivery, f"acc-{i}", 5) for i in range(4)}
    delivery.start_store()
    delivery.start_worker()

    def parked() -> dict[str, admin.ParkedEntity]:
        return {p.entity_id: p for p in admin.parked(delivery.store, "fragile", "account")}

    wait_for(lambda: len(parked()) == 2, "acc-1 and acc-2 parked for fragile")
    wait_for(lambda: sturdy.has(heads), "sturdy to handle everything")
    wait_for(lambda: fragile.has({"acc-0": 5, "acc-3": 5}), "fragile to go on with others")
    assert parked()["acc-1"].event_number == 3
    assert parked()["acc-1"].error == "RuntimeError: poison acc-1 #3"
    assert parked()["acc-1"].attempts == 5
    assert admin.parked(delivery.store, "sturdy", "account") == []
    status = {s.subscriber_id: s for s in admin.status(delivery.store).subscribers}
    assert [p.entity_id for p in status["fragile"].parked] == ["acc-1", "acc-2"] or [
        p.entity_id for p in status["fragile"].parked] == ["acc-2", "acc-1"]
    assert status["fragile"].lagging_entities == 2 and status["sturdy"].lagging_entities == 0

    # Later events of a parked entity wait (sturdy, unparked, gets them).
    heads["acc-1"] = write(delivery, "acc-1", 2)
    wait_for(lambda: sturdy.has(heads), "sturdy to handle acc-1 #6-7")
    wait_for(lambda: settled_for(delivery, "sturdy"), "sturdy caught up")
    assert fragile.by_entity()["acc-1"] == [1, 2]

    # Fixed: retry delivers from the failed event, in order.
    poison.discard(("acc-1", 3))
    retried = admin.retry_parked(delivery.store, "fragile", "account", "acc-1")
    assert retried.event_number == 3
    wait_for(lambda: fragile.has({"acc-1": 7}), "acc-1 #3-7 after retry")
    assert fragile.by_entity()["acc-1"] == [1, 2, 3, 4, 5, 6, 7]

    # Skipped: the bad event is marked handled without the handler, the rest delivered.
    admin.skip_parked(delivery.store, "fragile", "account", "acc-2")
    wait_for(lambda: fragile.has({"acc-2": 5}), "acc-2 #5 after skip")
    assert fragile.by_entity()["acc-2"] == [1, 2, 3, 5]
    assert parked() == {}
    assert sturdy.overlaps == 0
    assert_exactly_once_in_order(sturdy, heads)


def settled_for(delivery: Delivery, subscriber_id: str) -> bool:
    return all(
        s.events_behind == 0
        for s in admin.status(delivery.store).subscribers
        if s.subscriber_id == subscriber_id
    )


def test_late_subscriber_gets_the_whole_history_then_live_events(
    fast_storage: RedisStorage, broker: dramatiq.Broker, redis_client: redis.Redis,
    backend: str,
) -> None:
    first = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    (early,) = subscribe(first, "early")
    heads = {f"acc-{i}": write(first, f"acc-{i}", 1 + i % 5) for i in range(30)}
    first.start_store()
    first.start_worker()
    try:
        wait_for(lambda: early.has(heads), "the early subscriber to handle the history")
    finally:
        first.stop()

    # The app is deployed again with one more subscriber.
    storage = RedisStorage(redis_client, prefix=fast_storage.keys.prefix, publisher=FAST_PUBLISHER)
    with redis_broker(redis_client, backend, REDIS_URL) as second_broker:
        second = Delivery(storage, second_broker, events=ACCOUNT_EVENTS)
        early_again, late = subscribe(second, "early", "late")
        second.start_store()
        second.start_worker()
        try:
            wait_for(lambda: late.has(heads), "the late subscriber to get the history")
            live = {f"acc-{i}": write(second, f"acc-{i}", 2) for i in range(0, 40, 3)}
            heads.update(live)  # old and new entities
            wait_for(lambda: late.has(heads) and early_again.has(live), "the live events")
            wait_for(lambda: settled(second), "no lag")
            status = admin.status(second.store)
            caught_up = {s.subscriber_id: s.caught_up for s in status.subscribers}
        finally:
            second.stop()

    assert caught_up == {"early": True, "late": True}
    assert_exactly_once_in_order(late, heads)
    # The early subscriber was not handed the history again: only the live events.
    early_history = early.by_entity()
    assert set(early_again.by_entity()) == set(live)
    for entity_id, numbers in early_again.by_entity().items():
        assert numbers == list(range(len(early_history.get(entity_id, [])) + 1,
                                     heads[entity_id] + 1))


def withdrawals_as_negative_deposits(events: Iterator[Event]) -> Iterator[Event]:
    for event in events:
        if isinstance(event.content, Withdrawn):
            from dataclasses import replace

            yield replace(event, content=Deposited(amount=-event.content.amount))
        else:
            yield event


def test_upgrades_apply_to_delivered_events_as_to_read_events(
    fast_storage: RedisStorage, broker: dramatiq.Broker
) -> None:
    delivery = Delivery(
        fast_storage, broker, events=ACCOUNT_EVENTS,
        upgrades={"account": [withdrawals_as_negative_deposits]},
    )
    (recorder,) = subscribe(delivery, "balances")
    contents: Sequence[object] = [Opened(owner="ann"), Deposited(amount=10), Withdrawn(amount=3)]
    write_at_head(delivery.store, "account", "acc-1", *contents)  # type: ignore[arg-type]
    delivery.start_store()
    delivery.start_worker()
    try:
        wait_for(lambda: recorder.has({"acc-1": 3}), "3 events")
        write_at_head(delivery.store, "account", "acc-1", Withdrawn(amount=4))
        wait_for(lambda: recorder.has({"acc-1": 4}), "the live event")
    finally:
        delivery.stop()

    read: list[object] = []
    delivery.store.project("account", "acc-1", lambda event: read.append(event.content))
    assert recorder.contents["acc-1"] == read
    assert read[2:] == [Deposited(amount=-3), Deposited(amount=-4)]


def test_default_backoff_parks_a_failing_entity_within_seconds() -> None:
    options = DeliveryOptions()
    total = sum(options.backoff.delay_ms(attempt) for attempt in range(1, options.max_attempts))
    assert total < 10_000


def without_withdrawals(events: Iterator[Event]) -> Iterator[Event]:
    return (event for event in events if not isinstance(event.content, Withdrawn))


def test_events_an_upgrade_drops_count_as_handled(
    fast_storage: RedisStorage, broker: dramatiq.Broker
) -> None:
    """An upgrade may drop events (as it would on read). When the entity's last events are
    dropped, the subscriber is still caught up: not lagging, not re-sent notices forever."""
    delivery = Delivery(
        fast_storage, broker, events=ACCOUNT_EVENTS, upgrades={"account": [without_withdrawals]}
    )
    (recorder,) = subscribe(delivery, "balances")
    write_at_head(delivery.store, "account", "acc-1", Opened(owner="ann"), Deposited(amount=5))
    write_at_head(delivery.store, "account", "acc-1", Withdrawn(amount=1), Withdrawn(amount=2))
    delivery.start_store()
    delivery.start_worker()
    try:
        wait_for(lambda: recorder.has({"acc-1": 2}), "the two kept events")
        wait_for(lambda: settled(delivery), "no lag once the dropped events are passed")
        wait_for(lambda: delivery.storage.state.due_count("balances") == 0, "no re-send due")
        write_at_head(delivery.store, "account", "acc-1", Deposited(amount=7))
        wait_for(lambda: recorder.has({"acc-1": 5}), "the next kept event")
    finally:
        delivery.stop()
    assert recorder.by_entity() == {"acc-1": [1, 2, 5]}


class Closed(Content):
    reason: str


def test_an_unreadable_event_parks_the_entity_at_that_event(
    fast_storage: RedisStorage, broker: dramatiq.Broker, redis_client: redis.Redis
) -> None:
    """A newer app wrote an event this worker cannot read: the events before it are
    handled, the entity is parked at it (with the decode error), `skip` goes on after it."""
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    (recorder,) = subscribe(delivery, "balances")
    newer = Store(RedisStorage(redis_client, prefix=fast_storage.keys.prefix),
                  events={"account": [Opened, Deposited, Closed]})
    write_at_head(newer, "account", "acc-1", Opened(owner="x"), Deposited(amount=1),
                  Closed(reason="newer app"), Deposited(amount=2))
    write_at_head(newer, "account", "acc-2", Opened(owner="y"))
    delivery.start_store()
    delivery.start_worker()
    try:
        wait_for(lambda: admin.parked(delivery.store, "balances", "account"), "acc-1 parked")
        (parked,) = admin.parked(delivery.store, "balances", "account")
        assert (parked.entity_id, parked.event_number) == ("acc-1", 3)
        assert parked.error.startswith("UnknownEventError") and "Closed" in parked.error
        wait_for(lambda: recorder.has({"acc-1": 2, "acc-2": 1}), "the readable events")
        admin.skip_parked(delivery.store, "balances", "account", "acc-1")
        wait_for(lambda: recorder.has({"acc-1": 4}), "the event after the skipped one")
    finally:
        delivery.stop()
    assert recorder.by_entity() == {"acc-1": [1, 2, 4], "acc-2": [1]}


def test_a_corrupt_stream_parks_its_entity_and_the_others_go_on(
    fast_storage: RedisStorage, broker: dramatiq.Broker, redis_client: redis.Redis
) -> None:
    """An event deleted from a stream (a gap) parks the entity where it is missing; a stream
    key of another type parks its entity at its first event (the locking script reads
    several entities at once: it must not fail for the others)."""
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS,
                        options=DeliveryOptions(max_attempts=2, min_backoff_ms=10))
    (recorder,) = subscribe(delivery, "balances")
    write_at_head(delivery.store, "account", "gap", Opened(owner="x"), Deposited(amount=1),
                  Deposited(amount=2))
    for entity_id in ("wrong", "fine"):
        write_at_head(delivery.store, "account", entity_id, Opened(owner=entity_id))
    redis_client.xdel(fast_storage.keys.stream("account", "gap"), "2-0")
    wrong = fast_storage.keys.stream("account", "wrong")
    redis_client.delete(wrong)
    redis_client.set(wrong, "not a stream")
    delivery.start_store()
    delivery.start_worker()
    try:
        wait_for(lambda: len(admin.parked(delivery.store, "balances", "account")) == 2,
                 "gap and wrong parked")
        write_at_head(delivery.store, "account", "later", Opened(owner="later"))
        wait_for(lambda: recorder.has({"gap": 1, "fine": 1, "later": 1}), "the readable events")
    finally:
        delivery.stop()
    parked = {p.entity_id: p for p in admin.parked(delivery.store, "balances", "account")}
    assert (parked["gap"].event_number, parked["wrong"].event_number) == (2, 1)
    assert parked["gap"].error.startswith("CorruptEventError: stream entry 3-0 is out of sequence")
    assert "another type than a stream" in parked["wrong"].error
    assert recorder.by_entity() == {"gap": [1], "fine": [1], "later": [1]}


# -- Notices naming many entities (the publisher's batches) ------------------------------


def test_a_notice_naming_many_entities_handles_each_once_in_order(delivery: Delivery) -> None:
    (recorder,) = subscribe(delivery, "balances")
    entity_ids = same_partition(delivery.storage, 40)
    heads = {entity_id: write(delivery, entity_id, 1 + n % 3)
             for n, entity_id in enumerate(entity_ids)}
    delivery.start_worker()  # no publisher: only these notices tell the worker

    delivery.bus.notify_many("account", [(entity_id, heads[entity_id]) for entity_id in heads])
    wait_for(lambda: recorder.has(heads), "all 40 entities handled")
    before = delivery.done()
    # Duplicates and old notices in one message are skipped as single ones are.
    delivery.bus.notify_many("account", [(i, n) for i, n in heads.items()] + [(entity_ids[0], 1)])
    wait_for(lambda: delivery.done() >= before + 41, "the duplicate notices to be done")
    wait_for(lambda: settled_for(delivery, "balances"), "no lag")

    assert_exactly_once_in_order(recorder, heads)


def test_a_round_over_many_partitions_is_packed_into_few_messages_each_handled(
    delivery: Delivery,
) -> None:
    """Two entities in each of six partitions: two messages (four partitions, then two),
    not six; the worker handles each message partition after partition, every entity's
    events once and in order."""
    keys = delivery.storage.keys
    by_partition: dict[int, list[str]] = {}
    for i in range(100_000):
        entity_id = f"acc-{i}"
        partition = keys.partition("account", entity_id)
        if len(by_partition) < 6 or partition in by_partition:
            group = by_partition.setdefault(partition, [])
            if len(group) < 2:
                group.append(entity_id)
        if len(by_partition) == 6 and all(len(g) == 2 for g in by_partition.values()):
            break
    heads = {entity_id: write(delivery, entity_id, 1 + n % 3)
             for n, entity_id in enumerate(e for g in by_partition.values() for e in g)}
    (recorder,) = subscribe(delivery, "balances")
    counter = EnqueueCounter()
    delivery.broker.add_middleware(counter)
    delivery.start_worker()  # no publisher: only these notices tell the worker

    before = counter.count
    delivery.bus.notify_many("account", list(heads.items()))
    assert counter.count - before == 2
    wait_for(lambda: recorder.has(heads), "all 12 entities handled")
    wait_for(lambda: settled_for(delivery, "balances"), "no lag")
    assert_exactly_once_in_order(recorder, heads)


def test_a_notice_of_many_entities_checkpoints_them_together_one_event_each_per_round(
    delivery: Delivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten entities of six events in one notice: six rounds, each handling one event of
    every entity and recording all ten checkpoints in one script call (not one per event),
    each entity's events in order, each checkpointed before its next one is handled."""
    entity_ids = same_partition(delivery.storage, 10)
    heads = {entity_id: write(delivery, entity_id, 6) for entity_id in entity_ids}
    state = delivery.storage.state
    commits: list[dict[str, int]] = []
    checkpoint_seen: list[bool] = []
    real_commit = state.commit

    def commit(entities: Any, numbers: Any, *args: Any, **kwargs: Any) -> Any:
        commits.append({e.entity_id: n for e, n in zip(entities, numbers, strict=True)})
        return real_commit(entities, numbers, *args, **kwargs)

    def handler(event: Event) -> None:
        # The previous event of the entity is checkpointed before this one is handled.
        recorded = state.checkpoint(state.entity("balances", "account", event.entity_id))
        checkpoint_seen.append(recorded == event.event_number - 1)
        recorder(event)

    recorder = Recorder()
    monkeypatch.setattr(state, "commit", commit)
    monkeypatch.setattr(delivery_module, "SHARE_AFTER_MS", 60_000)  # a busy CI machine
    delivery.store.subscribe("account", "balances", handler)
    delivery.start_worker(threads=1)

    delivery.bus.notify_many("account", [(entity_id, 6) for entity_id in entity_ids])
    wait_for(lambda: recorder.has(heads), "all ten entities handled")

    assert all(checkpoint_seen) and len(checkpoint_seen) == 60
    assert commits == [dict.fromkeys(entity_ids, n) for n in range(1, 7)]
    assert_exactly_once_in_order(recorder, heads)


def test_a_failing_entity_of_a_many_entity_notice_does_not_hold_back_the_others(
    delivery: Delivery,
) -> None:
    entity_ids = same_partition(delivery.storage, 10)
    poison = entity_ids[3]
    (recorder,) = subscribe(delivery, "balances", fail=lambda e: e.entity_id == poison)
    heads = {entity_id: write(delivery, entity_id, 2) for entity_id in entity_ids}
    delivery.start_worker()

    delivery.bus.notify_many("account", [(entity_id, 2) for entity_id in entity_ids])

    others = {entity_id: 2 for entity_id in entity_ids if entity_id != poison}
    wait_for(lambda: recorder.has(others), "the other nine entities handled")
    wait_for(lambda: [p.entity_id for p in admin.parked(delivery.store, "balances", "account")]
             == [poison], "the failing entity parked")
    assert poison not in recorder.by_entity()
    del heads[poison]
    assert_exactly_once_in_order(recorder, heads)


def test_many_entity_notices_for_a_busy_entity_never_run_its_handler_at_once(
    fast_storage: RedisStorage,
) -> None:
    """The hot entity is in every notice while a slow handler holds it: notices find it
    busy and send it again; every entity is handled once, in order, one call at a time."""
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS)
    (recorder,) = subscribe(delivery, "slow", delay=0.003)
    hot, *cold = same_partition(fast_storage, 13)
    heads = {hot: write(delivery, hot, 20)}
    heads.update({entity_id: write(delivery, entity_id, 3) for entity_id in cold})
    delivery.start_worker(threads=8)
    try:
        for number in [*range(1, 21), None]:
            delivery.bus.notify_many("account", [(hot, number), *((c, 3) for c in cold)])
        wait_for(lambda: recorder.has(heads), "every entity handled")
    finally:
        delivery.stop()

    assert recorder.overlaps == 0
    assert_exactly_once_in_order(recorder, heads)


def test_slow_entities_of_one_notice_are_shared_with_other_workers(
    fast_storage: RedisStorage,
) -> None:
    """A notice whose handlers are slow hands the entities it has not started to new
    notices (split in two) after SHARE_AFTER_MS, so that idle workers take part."""
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS)
    (recorder,) = subscribe(delivery, "slow", delay=0.05)
    entity_ids = same_partition(fast_storage, 12)
    heads = {entity_id: write(delivery, entity_id, 1) for entity_id in entity_ids}
    delivery.start_worker(threads=4)
    try:
        delivery.bus.notify_many("account", [(entity_id, 1) for entity_id in entity_ids])
        wait_for(lambda: recorder.has(heads), "every entity handled")
        wait_for(lambda: settled_for(delivery, "slow"), "no lag")
    finally:
        delivery.stop()

    assert delivery.done() > len(entity_ids)  # the notice was split
    assert recorder.most_at_once > 1
    assert recorder.overlaps == 0
    assert_exactly_once_in_order(recorder, heads)


def test_entities_not_started_within_half_the_lock_lease_go_to_a_new_notice(
    fast_storage: RedisStorage,
) -> None:
    """Half a lock lease shorter than SHARE_AFTER_MS: entities a notice cannot start in time are
    handed back rather than handled under a lock about to expire; each is handled once."""
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS,
                        options=DeliveryOptions(lock_ms=180))
    (recorder,) = subscribe(delivery, "slow", delay=0.02)
    entity_ids = same_partition(fast_storage, 12)
    heads = {entity_id: write(delivery, entity_id, 1) for entity_id in entity_ids}
    delivery.start_worker(threads=1)
    try:
        delivery.bus.notify_many("account", [(entity_id, 1) for entity_id in entity_ids])
        wait_for(lambda: recorder.has(heads), "every entity handled")
        wait_for(lambda: settled_for(delivery, "slow"), "no lag")
    finally:
        delivery.stop()

    # 12 entities x 20 ms is over twice the 90 ms half-lease: the notice was split.
    assert delivery.done() > len(entity_ids)
    assert_exactly_once_in_order(recorder, heads)
