"""The Redis side of the workers' ports (`ports.SubscriberState`, `ports.Heartbeats`,
`ports.SubscriberRegistry`): what `RedisStorage.subscriber_state()`,
`process_heartbeats()` and `subscriber_registry()` return.

Each wraps the Redis object that does the work (`state.SubscriberState`,
`heartbeats.Heartbeats`, `subscribers.SubscriberRegistry`) and runs every call inside
`failures.translated`, so the workers see StorageUnavailableError / StorageFullError,
never a redis-py error. A call that writes (and that a lost connection may have applied)
says so: its outcome is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import DecodeError
from ..event import Event
from ..ports import (
    NOT_A_STREAM,
    Begun,
    Committed,
    Failed,
    Failure,
    RebuildRecord,
    SubscriberEntity,
)
from .failures import translated
from .heartbeats import Heartbeats
from .state import SubscriberState
from .subscribers import SubscriberRegistry

DecodeEntries = Callable[[str, str, int, Sequence[Any], str | None], Iterator[Event]]
"""decode(entity type, entity ID, after, entries, event 1's store entity ID)"""
NotAStream = Callable[[str, str, int], DecodeError]
ReadStored = Callable[[str, str, int], Iterator[Event]]


class RedisSubscriberState:
    """`ports.SubscriberState` on Redis: `state` with its errors translated, and the events
    `begin` read decoded by the storage's decoder."""

    def __init__(self, state: SubscriberState, server: str, *, decode: DecodeEntries,
                 not_a_stream: NotAStream, read_stored: ReadStored) -> None:
        self.state = state
        self.server = server
        self._decode = decode
        self._not_a_stream = not_a_stream
        self._read_stored = read_stored

    def entity(self, subscriber_id: str, entity_type: str, entity_id: str) -> SubscriberEntity:
        """The entity as the subscriber sees it (with its partition)."""
        return self.state.entity(subscriber_id, entity_type, entity_id)

    def partition(self, entity_type: str, entity_id: str) -> int:
        """The partition the entity is in."""
        return self.state.keys.partition(entity_type, entity_id)

    def begin(self, entities: Sequence[SubscriberEntity], event_numbers: Sequence[int | None],
              token: str, lock_ms: int, read_count: int) -> list[Begun]:
        """`SubscriberState.begin`, translated (it takes locks: a write)."""
        with translated(self.server, _doing("beginning", entities), writing=True):
            return self.state.begin(entities, event_numbers, token, lock_ms, read_count)

    def begun_events(self, e: SubscriberEntity, begun: Begun) -> Iterator[Event]:
        """The events `begin` read, decoded as iterated (DecodeError at an unreadable one,
        at once for an entity whose key holds no stream)."""
        if begun.state == NOT_A_STREAM:
            return _raising(self._not_a_stream(e.entity_type, e.entity_id, begun.checkpoint))
        return self._decode(e.entity_type, e.entity_id, begun.checkpoint, begun.entries,
                            begun.store_entity_id or None)

    def read_stored(self, entity_type: str, entity_id: str, after: int) -> Iterator[Event]:
        """The entity's stored events after `after` (translated by the storage's read)."""
        return self._read_stored(entity_type, entity_id, after)

    def commit(self, entities: Sequence[SubscriberEntity], event_numbers: Sequence[int],
               token: str, lock_ms: int, *, release: bool | Sequence[bool]) -> list[Committed]:
        """`SubscriberState.commit`, translated."""
        with translated(self.server, _doing("recording the checkpoints of", entities),
                        writing=True):
            return self.state.commit(entities, event_numbers, token, lock_ms, release=release)

    def unlock(self, entities: Sequence[SubscriberEntity], token: str) -> None:
        """`SubscriberState.unlock`, translated."""
        with translated(self.server, _doing("unlocking", entities), writing=True):
            self.state.unlock(entities, token)

    def renew(self, entities: Sequence[SubscriberEntity], token: str, lock_ms: int
              ) -> list[bool]:
        """`SubscriberState.renew`, translated."""
        with translated(self.server, _doing("renewing the locks of", entities), writing=True):
            return self.state.renew(entities, token, lock_ms)

    def fail(self, e: SubscriberEntity, token: str, failure: Failure, max_attempts: int
             ) -> Failed:
        """`SubscriberState.fail`, translated."""
        with translated(self.server, _doing("recording a failure of", [e]), writing=True):
            return self.state.fail(e, token, failure, max_attempts)

    def mark_due(self, entities: Iterable[SubscriberEntity]) -> None:
        """`SubscriberState.mark_due`, translated."""
        with translated(self.server, "marking notices due", writing=True):
            self.state.mark_due(entities)

    def wait_handled(self, subscriber_ids: Sequence[str], entity_type: str, entity_id: str,
                     event_number: int, timeout: float) -> None:
        """`SubscriberState.wait_handled` (which translates)."""
        self.state.wait_handled(subscriber_ids, entity_type, entity_id, event_number, timeout)

    def hold_pause(self, subscriber_id: str, token: str, pause_ms: int) -> bool:
        """`SubscriberState.hold_pause`, translated."""
        with translated(self.server, f"pausing {subscriber_id!r}", writing=True):
            return self.state.hold_pause(subscriber_id, token, pause_ms)

    def renew_pause(self, subscriber_id: str, token: str, pause_ms: int) -> bool:
        """`SubscriberState.renew_pause`, translated."""
        with translated(self.server, f"renewing the pause of {subscriber_id!r}", writing=True):
            return self.state.renew_pause(subscriber_id, token, pause_ms)

    def lift_pause(self, subscriber_id: str, token: str) -> None:
        """`SubscriberState.lift_pause`, translated."""
        with translated(self.server, f"lifting the pause of {subscriber_id!r}", writing=True):
            self.state.lift_pause(subscriber_id, token)

    def paused_by(self, subscriber_id: str) -> str | None:
        """`SubscriberState.paused_by`, translated."""
        with translated(self.server, f"reading the pause of {subscriber_id!r}"):
            return self.state.paused_by(subscriber_id)

    def locked(self, subscriber_id: str) -> list[SubscriberEntity]:
        """`SubscriberState.locked`, translated."""
        with translated(self.server, f"listing the locks of {subscriber_id!r}"):
            return self.state.locked(subscriber_id)

    def still_locked(self, entities: Sequence[SubscriberEntity]) -> list[SubscriberEntity]:
        """`SubscriberState.still_locked`, translated."""
        with translated(self.server, _doing("reading the locks of", entities)):
            return self.state.still_locked(entities)

    def start_over(self, subscriber_id: str, entity_type: str) -> None:
        """`SubscriberState.start_over`, translated."""
        with translated(self.server, f"starting {subscriber_id!r} over on {entity_type}",
                        writing=True):
            self.state.start_over(subscriber_id, entity_type)

    def record_rebuild(self, record: RebuildRecord) -> None:
        """`SubscriberState.record_rebuild`, translated."""
        with translated(self.server, f"recording the rebuild of {record.subscriber_id!r}",
                        writing=True):
            self.state.record_rebuild(record)

    def clear_rebuild(self, subscriber_id: str) -> None:
        """`SubscriberState.clear_rebuild`, translated."""
        with translated(self.server, f"clearing the rebuild of {subscriber_id!r}",
                        writing=True):
            self.state.clear_rebuild(subscriber_id)


class RedisHeartbeats:
    """`ports.Heartbeats` on Redis: `heartbeats` with its errors translated."""

    def __init__(self, heartbeats: Heartbeats, server: str) -> None:
        self.heartbeats = heartbeats
        self.server = server

    def beat(self, role: str) -> None:
        """`Heartbeats.beat`, translated."""
        with translated(self.server, f"beating as {role}", writing=True):
            self.heartbeats.beat(role)

    def stop(self, role: str) -> None:
        """`Heartbeats.stop`, translated."""
        with translated(self.server, f"removing the heartbeat of {role}", writing=True):
            self.heartbeats.stop(role)


class RedisSubscriberRegistry:
    """`ports.SubscriberRegistry` on Redis: `registry` with its errors translated."""

    def __init__(self, registry: SubscriberRegistry, server: str) -> None:
        self.registry = registry
        self.server = server

    def claim(self, subscriptions: Mapping[str, Iterable[str]]) -> None:
        """`SubscriberRegistry.claim`, translated."""
        with translated(self.server, "recording the subscribers"):
            self.registry.claim(subscriptions)


def _doing(what: str, entities: Sequence[SubscriberEntity]) -> str:
    """What a call was doing, for StorageUnavailableError: the first entity named."""
    if not entities:
        return f"{what} no entity"
    e = entities[0]
    more = f" and {len(entities) - 1} more" if len(entities) > 1 else ""
    return f"{what} {e.entity_type} {e.entity_id!r}{more} for {e.subscriber_id}"


def _raising(error: DecodeError) -> Iterator[Event]:
    """An iterator that raises `error` when first iterated."""
    raise error
    yield  # pragma: no cover - makes this a generator
