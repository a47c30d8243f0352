"""Model-based tests: RedisStorage (on fakeredis and on a real Redis) behaves exactly as
InMemoryStorage, the model, under random sequences of opens, reads, writes, concurrent
streams, retried writes, entity paging and upgrades; and (`RetentionModel`) of snapshots,
truncations, tombstones and the scavenger among them.

Every step runs on both stores; any difference in the events read (contents, numbers,
positions, IDs), in the outcome of a write or in the error raised is a failure. IDs made by
`Stream.write` differ between the two stores (each write makes its own), so they are
compared through a one-to-one correspondence learned as events are read: the same event
must always carry the same ID, and an entity's `store_entity_id` its first event's ID.
Writes made through `Storage.write` carry the same IDs on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from conftest import Deposited, Opened, Withdrawn, events_of
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from property_kit import RedisBackend, budget
from pydantic import BaseModel

from es_workers import (
    ConcurrencyError,
    Content,
    DecodeError,
    EsError,
    Event,
    InMemoryStorage,
    InvalidNameError,
    Position,
    RedisStorage,
    Store,
    Stream,
    TruncatedError,
)

ENTITIES = [("account", "a"), ("account", "b"), ("account", "c"), ("card", "a")]
SLOTS = 3  # streams held open at once (two on one entity: concurrent writers)


class Closed(Content):
    """Registered for no entity type: writing it must be refused by both."""


def drop_zero_deposits(events: Iterator[Event]) -> Iterator[Event]:
    for event in events:
        if not (isinstance(event.content, Deposited) and event.content.amount == 0):
            yield event


def withdrawals_in_cents(events: Iterator[Event]) -> Iterator[Event]:
    for event in events:
        if isinstance(event.content, Withdrawn):
            content = Withdrawn(amount=event.content.amount * 100)
            event = Event(event.entity_id, event.entity_type, event.event_number,
                          event.event_time, content, event.store_event_id,
                          event.store_entity_id, event.metadata, event.position)
        yield event


def build_store(storage: InMemoryStorage | RedisStorage) -> Store:
    return Store(
        storage,
        events={"account": [Opened, Deposited, Withdrawn], "card": [Opened, Deposited]},
        upgrades={"account": [drop_zero_deposits, withdrawals_in_cents]},
    )


contents = st.one_of(
    st.builds(Opened, owner=st.text(max_size=8)),
    st.builds(Deposited, amount=st.integers(-3, 3)),  # 0 is dropped by an upgrade
    st.builds(Withdrawn, amount=st.integers(0, 2**70)),
)
batches = st.lists(contents, min_size=1, max_size=5)


def outcome(action: Callable[[], Any]) -> tuple[Any, ...]:
    """What an action did, comparable across stores: its result or its error's particulars."""
    try:
        return ("ok", action())
    except ConcurrencyError as error:
        return (type(error), error.entity_type, error.entity_id, error.expected, error.actual)
    except DecodeError as error:
        return (type(error), error.entity_type, error.entity_id, error.event_number)
    except TruncatedError as error:
        return (type(error), error.first_kept_event, error.first_kept)
    except (EsError, ValueError) as error:
        return (type(error),)


class Correspondence:
    """The one-to-one map of the real store's IDs to the model's."""

    def __init__(self) -> None:
        self.to_model: dict[str, str] = {}
        self.to_real: dict[str, str] = {}

    def link(self, real: str | None, model: str | None) -> None:
        if real is None or model is None:
            assert real is model, f"token {real!r} vs model's {model!r}"
            return
        assert self.to_model.setdefault(real, model) == model, f"{real} was {self.to_model[real]}"
        assert self.to_real.setdefault(model, real) == real, f"{model} was {self.to_real[model]}"


class StorageModel(RuleBasedStateMachine):
    """Compares a RedisStorage of `backend` with an InMemoryStorage, step by step."""

    backend: RedisBackend

    def __init__(self) -> None:
        super().__init__()
        self.resources = ExitStack()
        real = self.resources.enter_context(self.backend.storage())
        # The same partitions: the model's log then numbers events as Redis' logs do.
        self.model = build_store(InMemoryStorage(partitions=real.partitions))
        self.real = build_store(real)
        self.ids = Correspondence()
        self.streams: dict[int, tuple[tuple[str, str], Stream, Stream]] = {}
        self.batches: list[tuple[str, list[Event]]] = []

    def teardown(self) -> None:
        self.resources.close()

    def same_events(self, model: list[Event], real: list[Event]) -> None:
        assert [self.comparable(e) for e in real] == [self.comparable(e) for e in model]
        for r, m in zip(real, model, strict=True):
            self.ids.link(r.store_event_id, m.store_event_id)
            self.ids.link(r.store_entity_id, m.store_entity_id)
            if r.store_event_id == m.store_event_id:  # written by Storage.write: same time
                assert r.event_time == m.event_time

    @staticmethod
    def comparable(event: Event) -> tuple[Any, ...]:
        assert event.event_time.utcoffset() is not None
        if event.event_number == 1:
            assert event.store_entity_id == event.store_event_id
        return (event.entity_type, event.entity_id, event.event_number, event.content,
                event.position)

    def both(self, action: Callable[[Store], Any]) -> tuple[Any, Any]:
        model, real = outcome(lambda: action(self.model)), outcome(lambda: action(self.real))
        assert [type(part) for part in real] == [type(part) for part in model]
        if model[0] != "ok":
            assert real == model
        return model, real

    # -- streams -------------------------------------------------------------------------

    @rule(slot=st.integers(0, SLOTS - 1), entity=st.sampled_from(ENTITIES),
          after=st.one_of(st.just(0), st.integers(0, 8)))
    def open(self, slot: int, entity: tuple[str, str], after: int) -> None:
        model, real = self.both(lambda store: store.open_from(*entity, after))
        self.streams[slot] = (entity, model[1], real[1])

    @precondition(lambda self: self.streams)
    @rule(data=st.data(), count=st.one_of(st.none(), st.integers(0, 3)))
    def read(self, data: st.DataObject, count: int | None) -> None:
        """Reads the whole stream, or only `count` events of it (the position follows)."""
        slot = data.draw(st.sampled_from(sorted(self.streams)))
        _, model_stream, real_stream = self.streams[slot]

        def take(stream: Stream) -> list[Event]:
            events = stream.all()
            return [e for _, e in zip(range(count), events, strict=False)] if count is not None \
                else list(events)

        model, real = outcome(lambda: take(model_stream)), outcome(lambda: take(real_stream))
        assert real[0] == model[0] and (model[0] == "ok" or real == model)
        if model[0] == "ok":  # else both raised the same error (a truncation, a tombstone)
            self.same_events(model[1], real[1])
        assert real_stream.position == model_stream.position

    @precondition(lambda self: self.streams)
    @rule(data=st.data(), batch=batches)
    def write(self, data: st.DataObject, batch: list[Content]) -> None:
        slot = data.draw(st.sampled_from(sorted(self.streams)))
        (entity_type, _), model_stream, real_stream = self.streams[slot]
        if entity_type == "card":
            batch = [c for c in batch if not isinstance(c, Withdrawn)] or [Opened(owner="x")]
        model = outcome(lambda: model_stream.write(*batch))
        real = outcome(lambda: real_stream.write(*batch))
        assert real == model
        assert real_stream.position == model_stream.position

    @precondition(lambda self: self.streams)
    @rule(data=st.data())
    def write_unregistered(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.streams)))
        _, model_stream, real_stream = self.streams[slot]
        model = outcome(lambda: model_stream.write(Deposited(amount=1), Closed()))
        real = outcome(lambda: real_stream.write(Deposited(amount=1), Closed()))
        assert real == model
        assert model[0] != "ok"

    # -- storage ---------------------------------------------------------------------------

    @rule(entity=st.sampled_from([*ENTITIES, ("account", "bad\nid")]), batch=batches,
          shift=st.sampled_from([0, 0, 0, -1, 1, -2]))
    def write_events(self, entity: tuple[str, str], batch: list[Content], shift: int) -> None:
        """Storage.write of events made once for both stores: mostly at the head, sometimes
        behind it (a conflict) or beyond it."""
        entity_type, entity_id = entity
        if entity_type == "card":
            batch = [c for c in batch if not isinstance(c, Withdrawn)] or [Opened(owner="x")]
        head = self.model.storage.position(*entity) if entity_id != "bad\nid" else 0  # type: ignore[attr-defined]
        events = events_of(entity_id, *batch, after=max(0, head + shift),
                           entity_type=entity_type)
        self.batches.append((entity_type, events))
        model, real = self.both(lambda store: store.storage.write(entity_type, events))
        assert real == model  # the same log positions

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A write sent again with the same store_event_ids (its reply was lost, say)."""
        entity_type, events = data.draw(st.sampled_from(self.batches))
        model, real = self.both(lambda store: store.storage.write(entity_type, events))
        assert real == model  # a retry returns the positions the write took

    @rule(entity=st.sampled_from(ENTITIES), after=st.integers(0, 8))
    def read_storage(self, entity: tuple[str, str], after: int) -> None:
        model, real = self.both(lambda store: list(store.storage.read(*entity, after)))
        if model[0] == "ok":  # else both raised the same error
            self.same_events(model[1], real[1])

    @rule(entity=st.sampled_from(ENTITIES))
    def project(self, entity: tuple[str, str]) -> None:
        def projected(store: Store) -> list[Event]:
            seen: list[Event] = []
            store.project(*entity, seen.append)
            return seen

        model, real = self.both(projected)
        if model[0] == "ok":  # else both raised the same error
            self.same_events(model[1], real[1])

    @rule(entity_type=st.sampled_from(["account", "card", "unknown"]), limit=st.integers(0, 3))
    def page(self, entity_type: str, limit: int) -> None:
        """Walks entity_ids page by page; each store follows its own tokens."""
        if limit == 0:  # refused alike
            self.both(lambda store: store.storage.entity_ids(entity_type, None, limit))
            return
        model_token: str | None = None
        real_token: str | None = None
        while True:
            model_ids, model_token = self.model.storage.entity_ids(
                entity_type, model_token, limit)
            real_ids, real_token = self.real.storage.entity_ids(entity_type, real_token, limit)
            assert real_ids == model_ids
            self.ids.link(real_token, model_token)
            if model_token is None:
                break

    @rule(after=st.integers(0, 4), entity_types=st.sampled_from([None, ["card"], ["account"]]))
    def read_all(self, after: int, entity_types: list[str] | None) -> None:
        """The log: each partition's events in the same order at the same positions (the
        merge of partitions goes by event time, which differs between the two stores)."""
        partitions = self.real.storage.partitions  # type: ignore[attr-defined]
        start = [Position(p, after) for p in range(partitions)]

        def by_partition(store: Store) -> dict[int, list[Event]]:
            found: dict[int, list[Event]] = {}
            for event in store.read_all(start, entity_types=entity_types):
                assert event.position is not None and event.position.number > after
                found.setdefault(event.position.partition, []).append(event)
            return found

        model, real = self.both(by_partition)
        assert sorted(real[1]) == sorted(model[1])
        for partition, events in model[1].items():
            self.same_events(events, real[1][partition])

    @invariant()
    def every_entity_reads_the_same(self) -> None:
        for entity in ENTITIES:
            model = list(self.model.storage.read(*entity))
            real = list(self.real.storage.read(*entity))
            self.same_events(model, real)


@pytest.mark.parametrize("backend", ["fakeredis", "redis"])
def test_redis_storage_behaves_as_the_in_memory_model(backend: str) -> None:
    class Machine(StorageModel):
        pass

    Machine.backend = RedisBackend(backend)
    run_state_machine_as_test(Machine, settings=budget())


def test_the_model_check_catches_a_divergence() -> None:
    """The comparison can fail: a store that lost an event is caught."""
    machine_type = type("Machine", (StorageModel,), {"backend": RedisBackend("fakeredis")})
    machine = machine_type()
    try:
        machine.real.storage.write("account", events_of("a", Opened(owner="x")))
        with pytest.raises(AssertionError):
            machine.every_entity_reads_the_same()
    finally:
        machine.teardown()


def test_invalid_entity_ids_are_refused_alike() -> None:
    assert outcome(lambda: InMemoryStorage().write("account", events_of("bad\nid", Closed()))) \
        == (InvalidNameError,)


class Balance(BaseModel):
    amount: int = 0


class RetentionModel(StorageModel):
    """StorageModel's steps and snapshots, truncations, deletes, tombstones and the scavenger:
    every outcome (events read, errors with their first kept event, snapshots found, what
    the scavenger removed) the same on both stores."""

    @rule(entity=st.sampled_from(ENTITIES), before=st.integers(0, 9))
    def truncate(self, entity: tuple[str, str], before: int) -> None:
        self.both(lambda store: store.truncate_before(*entity, before))

    @rule(entity=st.sampled_from(ENTITIES))
    def tombstone(self, entity: tuple[str, str]) -> None:
        self.both(lambda store: store.tombstone(*entity))

    @rule(entity=st.sampled_from(ENTITIES))
    def delete(self, entity: tuple[str, str]) -> None:
        self.both(lambda store: store.delete(*entity))

    @rule(entity_type=st.sampled_from(sorted({t for t, _ in ENTITIES})))
    def list_entities(self, entity_type: str) -> None:
        model, real = self.both(lambda store: store.entity_ids(entity_type, limit=1000))
        assert sorted(real[1][0]) == sorted(model[1][0])

    @rule()
    def scavenge(self) -> None:
        model, real = self.both(lambda store: store.scavenge())
        if model[0] == "ok":
            assert (real[1].entities, real[1].events) == (model[1].entities, model[1].events)

    @rule(entity=st.sampled_from(ENTITIES), amount=st.integers(0, 9),
          event_number=st.integers(0, 9))
    def save_snapshot(self, entity: tuple[str, str], amount: int, event_number: int) -> None:
        self.both(lambda store: store.save_snapshot(*entity, Balance(amount=amount),
                                                    event_number=event_number))

    @rule(entity=st.sampled_from(ENTITIES))
    def load_snapshot(self, entity: tuple[str, str]) -> None:
        def found(store: Store) -> tuple[Balance, int] | None:
            snapshot = store.load_snapshot(*entity, Balance)
            return None if snapshot is None else (snapshot.state, snapshot.event_number)

        model, real = self.both(found)
        assert real == model

    @rule(entity=st.sampled_from(ENTITIES), after=st.integers(0, 9))
    def read_after(self, entity: tuple[str, str], after: int) -> None:
        model, real = self.both(lambda store: list(store.read(*entity, after)))
        if model[0] == "ok":  # else both raised the same error
            self.same_events(model[1], real[1])

    @invariant()
    def every_entity_reads_the_same(self) -> None:
        for entity in ENTITIES:
            model, real = self.both(lambda store, e=entity: list(store.storage.read(*e)))
            if model[0] == "ok":  # else both raised the same error
                self.same_events(model[1], real[1])


@pytest.mark.parametrize("backend", ["fakeredis", "redis"])
def test_retention_on_redis_behaves_as_the_in_memory_model(backend: str) -> None:
    class Machine(RetentionModel):
        pass

    Machine.backend = RedisBackend(backend)
    run_state_machine_as_test(Machine, settings=budget())
