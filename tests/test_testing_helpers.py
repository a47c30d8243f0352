"""The test helpers shipped with the library: hydrate_state and verify_events (the Go
library's HydrateState and VerifyEvents) and the pytest fixtures es_redis / es_store_factory."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import fakeredis
import pytest
from conftest import ACCOUNT_EVENTS, Deposited, Opened, Withdrawn

from es_workers import Event, RedisStorage, Store
from es_workers.testing import hydrate_state, verify_events


class Account:
    def __init__(self) -> None:
        self.owner = ""
        self.balance = 0
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)
        match event.content:
            case Opened(owner=owner):
                self.owner = owner
            case Deposited(amount=amount):
                self.balance += amount
            case Withdrawn(amount=amount):
                self.balance -= amount


# --- hydrate_state -----------------------------------------------------------------------


def test_hydrate_state_feeds_the_contents_as_events_numbered_from_one() -> None:
    account = Account()

    returned = hydrate_state(account, Opened(owner="ann"), Deposited(amount=5), Withdrawn(amount=2))

    assert returned is account
    assert (account.owner, account.balance) == ("ann", 3)
    assert [e.event_number for e in account.events] == [1, 2, 3]
    assert {e.store_entity_id for e in account.events} == {account.events[0].store_event_id}
    assert len({e.store_event_id for e in account.events}) == 3
    assert all(uuid.UUID(e.store_event_id).version == 7 for e in account.events)
    assert all(e.event_time.tzinfo is not None for e in account.events)


def test_hydrate_state_accepts_a_callable_and_names_the_entity() -> None:
    seen: list[tuple[str, str, int]] = []

    def state(event: Event) -> None:
        seen.append((event.entity_type, event.entity_id, event.event_number))

    hydrate_state(state, Opened(owner="a"), Deposited(amount=1), entity_type="card", entity_id="c9")

    assert seen == [("card", "c9", 1), ("card", "c9", 2)]


def test_hydrate_state_lets_a_handler_error_through() -> None:
    def state(event: Event) -> None:
        raise ValueError(f"cannot apply event {event.event_number}")

    with pytest.raises(ValueError, match="event 1"):
        hydrate_state(state, Opened(owner="a"))


def test_hydrate_state_with_no_contents_leaves_the_state_alone() -> None:
    account = Account()
    assert hydrate_state(account) is account
    assert account.events == []


# --- verify_events -----------------------------------------------------------------------


def test_verify_events_passes_on_equal_contents_events_and_predicates() -> None:
    account = hydrate_state(Account(), Opened(owner="ann"), Deposited(amount=5))

    assert verify_events(
        [Opened(owner="ann"), Deposited(amount=5)], Opened(owner="ann"), Deposited(amount=5)
    )
    assert verify_events(account.events, Opened(owner="ann"), Deposited(amount=5))
    assert verify_events(
        account.events,
        lambda c: isinstance(c, Opened),
        lambda c: isinstance(c, Deposited) and c.amount > 1,
    )
    assert verify_events([])


def test_verify_events_mismatch_raises_a_readable_assertion_error() -> None:
    with pytest.raises(AssertionError) as caught:
        verify_events(
            [Opened(owner="ann"), Deposited(amount=5)],
            Opened(owner="ann"),
            Deposited(amount=6),
        )

    message = str(caught.value)
    lines = message.splitlines()
    assert "got 2, want 2" in lines[0]
    assert lines[1].startswith("  [0]")  # the matching position is not marked
    assert lines[2].startswith("✗ [1]")
    assert 'Deposited({"amount":5})' in lines[2]
    assert 'Deposited({"amount":6})' in lines[2]


def test_verify_events_reports_missing_and_unexpected_events() -> None:
    with pytest.raises(AssertionError, match=r"got 1, want 2") as missing:
        verify_events([Opened(owner="a")], Opened(owner="a"), Deposited(amount=1))
    with pytest.raises(AssertionError, match=r"got 2, want 1") as extra:
        verify_events([Opened(owner="a"), Deposited(amount=1)], Opened(owner="a"))

    assert "<missing>" in str(missing.value).splitlines()[2]
    assert "<none expected>" in str(extra.value).splitlines()[2]


def test_verify_events_names_the_predicate_that_failed() -> None:
    def is_large_deposit(content: object) -> bool:
        return isinstance(content, Deposited) and content.amount > 100

    with pytest.raises(AssertionError, match="is_large_deposit"):
        verify_events([Deposited(amount=5)], is_large_deposit)


def test_verify_events_tells_apart_contents_of_different_types_with_equal_fields() -> None:
    with pytest.raises(AssertionError, match="Withdrawn"):
        verify_events([Deposited(amount=5)], Withdrawn(amount=5))


# --- pytest fixtures shipped with the library --------------------------------------------


def test_es_redis_is_an_empty_fakeredis_with_lua(es_redis: fakeredis.FakeRedis) -> None:
    assert isinstance(es_redis, fakeredis.FakeRedis)
    assert es_redis.dbsize() == 0
    assert es_redis.eval("return 40 + 2", 0) == 42


def test_es_store_factory_builds_stores_that_share_one_storage(
    es_store_factory: Callable[..., Store], es_redis: fakeredis.FakeRedis
) -> None:
    writer = es_store_factory(events=ACCOUNT_EVENTS)
    reader = es_store_factory(events=ACCOUNT_EVENTS)
    writer.open("account", "a1").write(Opened(owner="ann"), Deposited(amount=5))

    account = Account()
    reader.project("account", "a1", account)

    assert isinstance(reader.storage, RedisStorage)
    assert reader.storage.client is es_redis
    assert (account.owner, account.balance) == ("ann", 5)
    assert es_redis.dbsize() > 0


def test_es_redis_does_not_leak_between_tests(es_redis: fakeredis.FakeRedis) -> None:
    # Runs after the test above wrote to its own es_redis.
    assert es_redis.dbsize() == 0
