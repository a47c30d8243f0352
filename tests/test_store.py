"""Store: registration of Content classes, refusal of bad input (nothing stored), projection
and subscriber bookkeeping. Every test runs on each Storage."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import fakeredis
import pytest
from conftest import Deposited, Opened
from dramatiq.brokers.stub import StubBroker
from kit import wait_for
from pydantic import BaseModel

from es_workers import (
    AsyncStore,
    Content,
    DramatiqEventBus,
    EsError,
    Event,
    InMemoryEventBus,
    InMemoryStorage,
    InvalidNameError,
    NotRegisteredError,
    Position,
    RedisStorage,
    Settings,
    Store,
    SubscriberError,
    UnknownNameError,
)
from es_workers.event import NO_METADATA, stored_event
from es_workers.ids import new_ids

MakeStore = Callable[..., Store]
AnyStorage = RedisStorage | InMemoryStorage

BAD_ENTITY_TYPES = ["", " ", "has space", "1starts-with-digit", "-dash", "a/b", "x" * 101, "é"]
BAD_ENTITY_IDS = ["", "tab\there", "new\nline", "nul\x00", "del\x7f", "c1\x85", "\ud800", "x" * 201]


class Closed(Content):
    reason: str


class PlainModel(BaseModel):
    amount: int


def stored_ids(storage: AnyStorage, entity_type: str = "account") -> list[str]:
    return storage.entity_ids(entity_type, limit=1000)[0]


def redis_keys(storage: AnyStorage) -> set[str]:
    """Every key under the storage's prefix but its metadata (none for InMemoryStorage)."""
    if not isinstance(storage, RedisStorage):
        return set()
    found = storage.client.scan_iter(f"{storage.keys.prefix}:*", count=1000)
    return {key.decode() for key in found} - {storage.keys.meta()}


def test_store_registers_its_events_with_the_storage_when_built(
    any_storage: AnyStorage,
) -> None:
    Store(any_storage, events={"account": [Opened, Deposited], "card": [Closed]})

    assert any_storage.entity_types() == ["account", "card"]
    with Store(any_storage).open("account", "a1") as stream:  # no start() needed
        stream.write(Opened(owner="ann"), Deposited(amount=1))
    assert [e.content for e in Store(any_storage).open("account", "a1").all()] == [
        Opened(owner="ann"),
        Deposited(amount=1),
    ]


def test_project_on_the_store_reads_the_whole_entity(make_any_store: MakeStore) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=2))
    store.open("account", "a2").write(Opened(owner="bob"))
    seen: list[tuple[str, int]] = []

    store.project("account", "a1", lambda e: seen.append((e.entity_id, e.event_number)))

    assert seen == [("a1", 1), ("a1", 2)]


def test_entities_are_kept_apart_by_type_and_id(make_any_store: MakeStore) -> None:
    store = make_any_store(events={"account": [Opened, Deposited], "card": [Opened, Deposited]})
    store.open("account", "x").write(Opened(owner="ann"))
    store.open("card", "x").write(Opened(owner="card"), Deposited(amount=1))
    store.open("account", "y").write(Deposited(amount=7))

    assert [e.content for e in store.open("account", "x").all()] == [Opened(owner="ann")]
    assert [e.event_number for e in store.open("card", "x").all()] == [1, 2]
    assert [e.content for e in store.open("account", "y").all()] == [Deposited(amount=7)]


@pytest.mark.parametrize("entity_type", [*BAD_ENTITY_TYPES, None, 7])
def test_a_bad_entity_type_is_refused_and_nothing_is_stored(
    make_any_store: MakeStore, any_storage: AnyStorage, entity_type: object
) -> None:
    store = make_any_store()
    with pytest.raises(InvalidNameError) as caught:
        store.open(entity_type, "a1")  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        list(any_storage.read(entity_type, "a1"))  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        any_storage.register(entity_type, Opened)  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        any_storage.entity_ids(entity_type)  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        Store(any_storage, events={entity_type: [Opened]})  # type: ignore[dict-item]

    assert isinstance(caught.value, EsError)
    assert isinstance(caught.value, ValueError)
    assert repr(entity_type)[:50] in str(caught.value)  # long ones are cut
    assert redis_keys(any_storage) == set()


@pytest.mark.parametrize("entity_id", [*BAD_ENTITY_IDS, None, 7, ["a", "list"]])
def test_a_bad_entity_id_is_refused_and_nothing_is_stored(
    make_any_store: MakeStore, any_storage: AnyStorage, entity_id: object
) -> None:
    store = make_any_store()
    with pytest.raises(InvalidNameError) as caught:
        store.open("account", entity_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        store.open_from("account", entity_id, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        store.project("account", entity_id, lambda e: None)  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        list(any_storage.read("account", entity_id))  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        any_storage.write("account", [event_of(entity_id, Opened(owner="x"))])

    assert repr(entity_id)[:50] in str(caught.value)  # long ones are cut
    assert redis_keys(any_storage) == set()
    assert stored_ids(any_storage) == []


def test_any_text_is_an_entity_id_and_each_lands_in_a_stream_of_its_own(
    make_any_store: MakeStore,
) -> None:
    """IDs that differ only by ':' placement, braces or Unicode normalisation are different
    entities: keys hold the ID verbatim after the type (which has no ':')."""
    store = make_any_store(events={"account": [Opened], "account.x": [Opened]})
    ids = [" ", "has space", "é", "e\u0301", "ﬁ", "fi", "a:b", "a::b", ":a:b", "{p0}", "}{",
           "{a}:{b}", "x" * 200, "日本語 ✓"]
    for entity_id in ids:
        with store.open("account", entity_id) as stream:
            stream.write(Opened(owner=entity_id))
    store.open("account.x", "a:b").write(Opened(owner="other type"))

    for entity_id in ids:
        events = list(store.open("account", entity_id).all())
        assert [e.content for e in events] == [Opened(owner=entity_id)], entity_id
        assert events[0].entity_id == entity_id
    assert [e.content for e in store.open("account.x", "a:b").all()] == [
        Opened(owner="other type")
    ]
    listed, _ = store.entity_ids("account", limit=100)
    assert sorted(listed) == sorted(ids)


def event_of(entity_id: object, content: object, number: int = 1) -> Event:
    return Event(
        entity_id=entity_id,  # type: ignore[arg-type]
        entity_type="account",
        event_number=number,
        event_time=datetime.now(UTC),
        content=content,  # type: ignore[arg-type]
        store_event_id=new_ids(1)[0],
        store_entity_id="",
    )


def test_entity_ids_of_every_allowed_shape_are_stored_and_read(make_any_store: MakeStore) -> None:
    store = make_any_store()
    odd_ids = ["a", "x" * 200, "with:colon", "{braces}", "0190d7c2-7b3a-7c1e", "~!@#$%^&*()"]
    for entity_id in odd_ids:
        store.open("account", entity_id).write(Opened(owner=entity_id))

    for entity_id in odd_ids:
        assert [e.content for e in store.open("account", entity_id).all()] == [
            Opened(owner=entity_id)
        ]
    assert store.storage.entity_ids("account") == (odd_ids, None)


@pytest.mark.parametrize(
    "content",
    ["a string", {"amount": 1}, None, PlainModel(amount=1), Closed(reason="not for accounts")],
    ids=["str", "dict", "None", "plain BaseModel", "unregistered Content"],
)
def test_content_that_the_entity_type_cannot_hold_is_refused_and_nothing_is_stored(
    make_any_store: MakeStore, any_storage: AnyStorage, content: object
) -> None:
    store = make_any_store()
    store.open("account", "a1").write(Opened(owner="ann"))
    before = redis_keys(any_storage)
    stream = store.open("account", "a1")
    list(stream.all())

    with pytest.raises(NotRegisteredError) as caught:
        stream.write(Deposited(amount=1), content)  # type: ignore[arg-type]
    with pytest.raises(NotRegisteredError):
        store.open("account", "new").write(content)  # type: ignore[arg-type]

    assert isinstance(caught.value, EsError)
    assert "account" in str(caught.value)
    assert stream.position == 1
    assert [e.event_number for e in store.open("account", "a1").all()] == [1]
    assert stored_ids(any_storage) == ["a1"]
    assert redis_keys(any_storage) == before


def test_content_registered_for_another_type_is_refused(make_any_store: MakeStore) -> None:
    store = make_any_store(events={"account": [Opened], "card": [Closed]})

    with pytest.raises(NotRegisteredError, match="Closed"):
        store.open("account", "a1").write(Closed(reason="wrong type"))

    assert list(store.open("account", "a1").all()) == []


def test_registering_something_that_is_not_content_is_refused(any_storage: AnyStorage) -> None:
    for bad in (PlainModel, Opened(owner="instance"), "Opened", int):
        with pytest.raises(NotRegisteredError):
            any_storage.register("account", bad)  # type: ignore[arg-type]
        with pytest.raises(NotRegisteredError):
            Store(any_storage, events={"account": [bad]})  # type: ignore[list-item]


def test_two_content_classes_with_one_event_name_are_refused(any_storage: AnyStorage) -> None:
    class Renamed(Content):
        event_name = "Deposited"
        amount: int

    any_storage.register("account", Deposited)
    any_storage.register("account", Deposited)  # the same class again is fine
    with pytest.raises(NotRegisteredError, match="Deposited"):
        any_storage.register("account", Renamed)
    any_storage.register("card", Renamed)  # names are per entity type


def test_event_name_defaults_to_the_class_name_and_can_be_set(make_any_store: MakeStore) -> None:
    class AccountClosed(Content):
        event_name = "closed-v1"
        reason: str

    assert Deposited.event_name == "Deposited"
    assert AccountClosed.event_name == "closed-v1"
    store = make_any_store(events={"account": [Opened, AccountClosed]})
    store.open("account", "a1").write(Opened(owner="a"), AccountClosed(reason="done"))

    assert [e.content for e in store.open("account", "a1").all()][1] == AccountClosed(reason="done")


def test_upgrades_that_are_not_callable_or_for_a_bad_type_are_refused(
    any_storage: AnyStorage,
) -> None:
    with pytest.raises(TypeError):
        Store(any_storage, upgrades={"account": ["not callable"]})  # type: ignore[list-item]
    with pytest.raises(InvalidNameError):
        Store(any_storage, upgrades={"bad type": [lambda events: events]})


def test_subscribers_are_listed_per_entity_type_and_the_decorator_returns_the_function(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store(events={"account": [Opened, Deposited], "card": [Closed]})

    @store.subscribe("account", "balances")
    def balances(event: Event) -> None:
        pass

    store.subscribe("account", "audit", lambda event: None)
    store.subscribe("card", "audit", lambda event: None)

    assert callable(balances) and balances.__name__ == "balances"
    assert store.subscriber_ids("account") == ["balances", "audit"]
    assert store.subscriber_ids("card") == ["audit"]
    assert store.subscriber_ids("nothing") == []
    with pytest.raises(SubscriberError):
        store.subscribe("account", "balances", lambda event: None)


@pytest.mark.parametrize("bus", ["memory", "dramatiq"])
def test_subscribing_to_an_entity_type_without_registered_events_is_refused_naming_the_known(
    bus: str,
) -> None:
    storage = RedisStorage(fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix="typo")
    chosen = InMemoryEventBus() if bus == "memory" else DramatiqEventBus(StubBroker())
    store = Store(storage, bus=chosen, events={"account": [Opened], "card": [Closed]})

    with pytest.raises(UnknownNameError, match=r"'acount'.*did you mean 'account'\?.*"
                       r"known entity types: 'account', 'card'"):
        store.subscribe("acount", "balances", lambda event: None)
    with pytest.raises(UnknownNameError, match=r"'zebra'.*known entity types"):

        @store.subscribe("zebra", "balances")
        def never(event: Event) -> None:
            pass

    assert store.subscriber_ids("acount") == store.subscriber_ids("zebra") == []
    store.subscribe("account", "balances", lambda event: None)  # a registered type is fine
    assert store.subscriber_ids("account") == ["balances"]


def test_an_event_a_storage_builds_is_an_event_like_one_built_by_hand() -> None:
    """Storages build events without Event's frozen __init__ (hydrating is read-bound):
    the result is a frozen Event, equal to one made by hand, field for field."""
    fields = ("a1", "account", 3, datetime(2026, 1, 2, tzinfo=UTC), Opened(owner="o"),
              "sid", "first", NO_METADATA, Position(2, 9))
    built, by_hand = stored_event(*fields), Event(*fields)

    assert type(built) is Event
    assert built == by_hand and repr(built) == repr(by_hand)
    assert [getattr(built, name) for name in Event.__dataclass_fields__] == list(fields)
    with pytest.raises(AttributeError):
        built.event_number = 4  # type: ignore[misc]


def test_a_huge_refused_name_is_not_echoed_whole() -> None:
    """A 10 KB entity ID (a request body pasted into a URL, say) gets an error of a line."""
    store = Store(InMemoryStorage(), events={"account": [Opened]})
    with pytest.raises(InvalidNameError) as caught:
        store.open("account", "x" * 10_000 + "\n")
    message = str(caught.value)
    assert len(message) < 300
    assert "10001 characters" in message and "'xxxx" in message
    with pytest.raises(InvalidNameError) as caught:
        store.open("a" * 5_000, "a1")
    assert len(str(caught.value)) < 300 and "5000 characters" in str(caught.value)


def test_the_records_of_a_store_and_of_what_it_runs_go_through_its_logger(
    any_storage: AnyStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """`Store(logger=...)`: the default in-memory bus reports a failing subscriber, and the
    publisher `start()` runs reports itself, through the store's logger only."""
    logger = logging.getLogger("app.events")
    store = Store(any_storage, events={"account": [Opened, Deposited]}, logger=logger)

    def fails(event: Event) -> None:
        raise RuntimeError("handler broke")

    store.subscribe("account", "failing", fails)
    caplog.set_level(logging.DEBUG)
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        store.open("account", "a1").write(Opened(owner="a"))
        wait_for(lambda: "handler broke" in caplog.text, "the failing subscriber's record")
    finally:
        store.close()
        thread.join(timeout=10)

    failed = [r for r in caplog.records if r.exc_info and "handler broke" in str(r.exc_info[1])]
    assert [r.name for r in failed] == ["app.events"]
    if isinstance(any_storage, RedisStorage):
        assert any("publisher" in r.getMessage() and "started" in r.getMessage()
                   for r in caplog.records if r.name == "app.events")
    assert [r.name for r in caplog.records if r.name.startswith(("es_workers.memory",
                                                               "es_workers.publisher"))] == []


def test_a_store_from_settings_logs_its_wiring_through_its_logger(
    half: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("app.wiring")
    settings = Settings(redis_url=None, prefix=f"t-{uuid.uuid4().hex[:12]}")
    with caplog.at_level(logging.WARNING):
        if half == "sync":
            Store.from_settings(settings=settings, logger=logger).close()
        else:
            asyncio.run(AsyncStore.from_settings(settings=settings, logger=logger).close())
    embedded = [r for r in caplog.records if "embedded Redis" in r.getMessage()]
    assert [r.name for r in embedded] == ["app.wiring"]
