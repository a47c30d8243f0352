"""Subscriber state in Redis: checkpoints, locks, failures, parked entities, due notices
and catch-up cursors. This module alone names those keys and talks to Redis about them;
the publisher, delivery and admin call its methods.

Per (subscriber, entity type, partition) it keeps hashes keyed by entity ID:
- checkpoints: the last event number the subscriber handled;
- failures: failed attempts at the entity's next event;
- retry-at: when the next attempt may start (server time, ms), while a failure backs off;
- parked: a JSON record of the event it gave up on;
and per (subscriber, partition) a sorted set of due notices: notices sent but not yet seen
handled, re-sent by the publisher's sweep if still lagging when due. A re-sent notice is
remembered (per subscriber, entity type and partition: entity ID -> re-sends since its
delivery last began, and the subscriber's count of deliveries begun then) until a worker
begins the entity; begin.lua counts the deliveries begun per (subscriber, partition). A
notice re-sent while no delivery of its subscriber began since, or any notice while no
worker runs, is waiting in the queue, not lost: it is not sent again (see `take_due`). A lock per
(subscriber, entity) keeps one worker on an entity at a time: its value is the holder's
token, and every script that records something for the entity (checkpoint, failure,
parking, renewal, release) first checks the token is still the caller's, so a holder whose
lease expired is fenced off.

A rebuild holds a pause per (subscriber, partition), which keeps every worker off the
subscriber's entities, and a record of its progress per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ..errors import NotParkedError, ParkedError, WaitTimeoutError
from ..ports import (  # the values of the SubscriberState port
    Begun,
    Committed,
    Failed,
    Failure,
    RebuildRecord,
    SubscriberEntity,
)
from .cluster import is_cluster
from .failures import server_name, translated
from .keys import RedisKeys, text
from .layouts import BEGIN, CHECKPOINT, FAIL, PAUSE, RENEW, UNLOCK
from .scripts import Script

__all__ = ["NONE_WAITING", "TRACEBACK_LIMIT", "WAIT_POLL_S", "ParkedEntity", "SubscriberState"]

NONE_WAITING = 2**62  # `least_handled` of an entity type no subscriber reads
TRACEBACK_LIMIT = 4096  # characters of a handler's traceback kept with a parked entity
WAIT_POLL_S = 0.25  # wait_handled looks again this often should a message be missed
RESEND_DOUBLINGS = 6  # a notice not begun is looked at again after at most 64 redrives


@dataclass(frozen=True)
class DueNotices:
    """What a sweep found due (`take_due`): the notices to send again, and those waiting
    in their queue (no worker runs, or none began a delivery of the subscriber since they
    were re-sent)."""

    resend: list[SubscriberEntity]
    waiting: list[SubscriberEntity]


@dataclass(frozen=True)
class ParkedEntity:
    subscriber_id: str
    entity_type: str
    entity_id: str
    event_number: int
    error: str  # "ExceptionType: message"
    attempts: int
    parked_at: str  # ISO 8601, UTC
    traceback: str = ""  # the last attempt's, cut to TRACEBACK_LIMIT characters


class SubscriberState:
    """Subscriber state in Redis (see the module's doc): the Redis commands and scripts,
    raising redis-py's errors. The workers get it through `RedisStorage.subscriber_state()`
    (`redis.worker_ports`), which translates them."""

    def __init__(self, client: Any, keys: RedisKeys, *, redrive_after_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.redrive_after_ms = redrive_after_ms
        self._begin = Script(client, "begin")
        self._checkpoint = Script(client, "checkpoint")
        self._unlock = Script(client, "unlock")
        self._renew = Script(client, "renew")
        self._fail = Script(client, "fail")
        self._on_cluster = is_cluster(client)

    def entity(self, subscriber_id: str, entity_type: str, entity_id: str) -> SubscriberEntity:
        return SubscriberEntity(
            subscriber_id, entity_type, entity_id, self.keys.partition(entity_type, entity_id)
        )

    # -- Key names (this module's alone) -------------------------------------------------

    def _checkpoints(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:checkpoints:{subscriber_id}:{entity_type}"

    def _failures(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:failures:{subscriber_id}:{entity_type}"

    def _retry_at(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:retry-at:{subscriber_id}:{entity_type}"

    def _parked(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:parked:{subscriber_id}:{entity_type}"

    def _missed(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:missed:{subscriber_id}:{entity_type}"

    def _lock(self, e: SubscriberEntity) -> str:
        return (f"{self.keys.tag(e.partition)}:lock:{e.subscriber_id}:{e.entity_type}:"
                f"{e.entity_id}")

    def _due(self, subscriber_id: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:due:{subscriber_id}"

    def _resent(self, subscriber_id: str, entity_type: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:resent:{subscriber_id}:{entity_type}"

    def _started(self, subscriber_id: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:started:{subscriber_id}"

    def _handled_channel(self, e: SubscriberEntity) -> str:
        """Pub/Sub channel told each checkpoint move and parking of the entity."""
        return (f"{self.keys.tag(e.partition)}:handled:{e.subscriber_id}:{e.entity_type}:"
                f"{e.entity_id}")

    def _tell_waiters(self, e: SubscriberEntity, what: str) -> None:
        """Wakes `wait_handled` callers once the change is stored: a PUBLISH after the
        transaction, since redis-py refuses PUBLISH in a cluster pipeline (a lost message
        costs a waiter one poll)."""
        self.client.publish(self._handled_channel(e), what)

    def _caught_up(self, entity_type: str) -> str:
        """Set of subscriber IDs that have been handed the entity type's history."""
        return f"{self.keys.prefix}:caught-up:{entity_type}"

    def _cursor(self, entity_type: str, subscriber_id: str) -> str:
        return f"{self.keys.prefix}:catch-up:{entity_type}:{subscriber_id}"

    # -- Delivery: lock, checkpoint, renew, fail (and park) ------------------------------

    def begin(self, entities: Sequence[SubscriberEntity], event_numbers: Sequence[int | None],
              token: str, lock_ms: int, read_count: int) -> list[Begun]:
        """For each entity (all of one subscriber and entity type) whose notice says it has
        events up to `event_numbers[i]` (None: its head): skips it if parked, the notice is
        old or its failure is backing off, else takes its lock and reads up to `read_count`
        events after its checkpoint. One script call per partition, all in one round trip
        (on a cluster, where partitions are slots apart, one per partition)."""
        groups = _by_partition(entities, event_numbers)
        calls = []
        for group in groups:
            first = entities[group[0]]
            s, t, p = first.subscriber_id, first.entity_type, first.partition
            locks: list[tuple[str, str]] = []
            items: list[tuple[str, int]] = []
            for i in group:
                e, number = entities[i], event_numbers[i]
                locks.append((self._lock(e), self.keys.stream(e.entity_type, e.entity_id)))
                items.append((e.entity_id, -1 if number is None else number))
            keys = BEGIN.keys.pack(
                locks, checkpoints=self._checkpoints(s, t, p), parked=self._parked(s, t, p),
                heads=self.keys.heads(t, p), retry_at=self._retry_at(s, t, p),
                failures=self._failures(s, t, p), missed=self._missed(s, t, p),
                truncated=self.keys.truncated(t, p), paused=self._paused(s, p),
                resent=self._resent(s, t, p), started=self._started(s, p))
            calls.append((keys, BEGIN.args.pack(items, token=token, lock_ms=lock_ms,
                                                page=read_count)))
        return _in_order(len(entities), [
            (group, [
                Begun(int(state), int(checkpoint), list(entries), text(store_entity_id),
                      int(attempts), int(retry_in_ms))
                for state, checkpoint, store_entity_id, entries, attempts, retry_in_ms in reply
            ])
            for group, reply in zip(groups, self._calls(self._begin, calls, raw=True),
                                    strict=True)
        ])

    def commit(self, entities: Sequence[SubscriberEntity], event_numbers: Sequence[int],
               token: str, lock_ms: int, *, release: bool | Sequence[bool]) -> list[Committed]:
        """Moves each entity's checkpoint to its event number if its lock is still ours,
        renewing it; with `release` (one flag for all, or one per entity), lets the lock go
        when that was the entity's last event. Entities of one subscriber and entity type;
        one script call per partition, in one round trip (see `begin`)."""
        releases = [release] * len(entities) if isinstance(release, bool) else release
        groups = _by_partition(entities, event_numbers, releases)
        calls = []
        for group in groups:
            first = entities[group[0]]
            s, t, p = first.subscriber_id, first.entity_type, first.partition
            locks: list[tuple[str]] = []
            items: list[tuple[Any, ...]] = []
            for i in group:
                e = entities[i]
                locks.append((self._lock(e),))
                items.append((e.entity_id, event_numbers[i], e.member,
                              self._handled_channel(e), int(releases[i])))
            keys = CHECKPOINT.keys.pack(
                locks, checkpoints=self._checkpoints(s, t, p), heads=self.keys.heads(t, p),
                due=self._due(s, p), failures=self._failures(s, t, p),
                retry_at=self._retry_at(s, t, p))
            calls.append((keys, CHECKPOINT.args.pack(items, token=token, lock_ms=lock_ms)))
        return _in_order(len(entities), [
            (group, [Committed(int(head), bool(released)) for head, released in reply])
            for group, reply in zip(groups, self._calls(self._checkpoint, calls), strict=True)
        ])

    def unlock(self, entities: Sequence[SubscriberEntity], token: str) -> None:
        """Releases the entities' locks (of one subscriber and entity type) that `token`
        still holds; one round trip (see `begin`)."""
        self._calls(self._unlock, [
            (UNLOCK.keys.pack([(self._lock(entities[i]),) for i in group]),
             UNLOCK.args.pack(token=token))
            for group in _by_partition(entities)])

    def renew(self, entities: Sequence[SubscriberEntity], token: str, lock_ms: int
              ) -> list[bool]:
        """Extends the entities' locks (of one subscriber and entity type) by `lock_ms`
        where `token` still holds them; False for each one it no longer holds (lost: stop
        it, record nothing). One round trip (see `begin`)."""
        groups = _by_partition(entities)
        replies = self._calls(self._renew, [
            (RENEW.keys.pack([(self._lock(entities[i]),) for i in group]),
             RENEW.args.pack(token=token, lock_ms=lock_ms))
            for group in groups])
        return _in_order(len(entities), [
            (group, [bool(int(answer)) for answer in reply])
            for group, reply in zip(groups, replies, strict=True)])

    def _calls(self, script: Script, calls: list[tuple[list[str], list[Any]]], *,
               raw: bool = False) -> list[Any]:
        """The script's replies to calls of one partition each: one call as it is, several
        on one pipeline (a script that ran is not sent again: NOSCRIPT refuses them all), on
        a cluster one after the other (each partition is a slot of its own)."""
        if len(calls) == 1:
            keys, args = calls[0]
            return [script(keys, args, raw=raw)]
        if self._on_cluster:
            return [script(keys, args, raw=raw) for keys, args in calls]
        return script.many(calls, raw=raw)

    def fail(self, e: SubscriberEntity, token: str, failure: Failure, max_attempts: int
             ) -> Failed:
        """Counts a failed attempt at the entity's next event if `token` still holds its
        lock: until `max_attempts`, no attempt starts again before `failure.backoff_ms` has
        passed (its due entry wakes it then); at `max_attempts`, parks the entity (until
        `unpark`). One round trip."""
        s, t, p = e.subscriber_id, e.entity_type, e.partition
        record = {
            "event_number": failure.event_number, "error": failure.error, "attempts": 0,
            "parked_at": datetime.now(UTC).isoformat(),
            "traceback": failure.traceback[-TRACEBACK_LIMIT:],
        }
        attempts, retry_in_ms = self._fail(
            keys=FAIL.keys.pack(failures=self._failures(s, t, p),
                                retry_at=self._retry_at(s, t, p), parked=self._parked(s, t, p),
                                due=self._due(s, p), lock=self._lock(e)),
            args=FAIL.args.pack(token=token, id=e.entity_id, member=e.member,
                                channel=self._handled_channel(e), max_attempts=max_attempts,
                                backoff_ms=failure.backoff_ms, record=json.dumps(record)),
        )
        return Failed(int(attempts), int(retry_in_ms))

    # -- Read-your-writes ----------------------------------------------------------------

    def wait_handled(self, subscriber_ids: Sequence[str], entity_type: str, entity_id: str,
                     event_number: int, timeout: float) -> None:
        """Returns once each subscriber has handled the entity up to `event_number`.
        Wakes on the checkpoint script's messages; polls every WAIT_POLL_S in case one was
        missed. Raises ParkedError or WaitTimeoutError."""
        entities = [self.entity(s, entity_type, entity_id) for s in subscriber_ids]
        deadline = time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        doing = f"waiting for {entity_type} {entity_id!r} to be handled"
        with translated(server_name(self.client), doing), contextlib.closing(pubsub):
            pubsub.subscribe(*(self._handled_channel(e) for e in entities))
            while True:
                behind = self._behind(entities, event_number)
                if not behind:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeoutError(entity_type, entity_id, event_number, behind,
                                           timeout)
                pubsub.get_message(timeout=min(remaining, WAIT_POLL_S))

    async def wait_handled_async(self, subscriber_ids: Sequence[str], entity_type: str,
                                 entity_id: str, event_number: int, timeout: float) -> None:
        """`wait_handled` for a state built on a `redis.asyncio` client (AsyncStore)."""
        entities = [self.entity(s, entity_type, entity_id) for s in subscriber_ids]
        deadline = time.monotonic() + timeout
        # redis.asyncio's RedisCluster has no Pub/Sub: there the wait polls every WAIT_POLL_S.
        pubsub = (self.client.pubsub(ignore_subscribe_messages=True)
                  if hasattr(self.client, "pubsub") else None)
        doing = f"waiting for {entity_type} {entity_id!r} to be handled"
        with translated(server_name(self.client), doing):
            try:
                if pubsub is not None:
                    await pubsub.subscribe(*(self._handled_channel(e) for e in entities))
                while True:
                    pipe = self._behind_pipeline(entities)
                    behind = self._behind_from(entities, event_number, await pipe.execute())
                    if not behind:
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WaitTimeoutError(entity_type, entity_id, event_number, behind,
                                               timeout)
                    if pubsub is not None:
                        await pubsub.get_message(timeout=min(remaining, WAIT_POLL_S))
                    else:
                        await asyncio.sleep(min(remaining, WAIT_POLL_S))
            finally:
                if pubsub is not None:
                    await pubsub.aclose()

    def _behind(self, entities: Sequence[SubscriberEntity], event_number: int
                ) -> dict[str, int]:
        return self._behind_from(
            entities, event_number, self._behind_pipeline(entities).execute()
        )

    def _behind_pipeline(self, entities: Sequence[SubscriberEntity]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for e in entities:
            pipe.hget(self._checkpoints(e.subscriber_id, e.entity_type, e.partition),
                      e.entity_id)
            pipe.hget(self._parked(e.subscriber_id, e.entity_type, e.partition), e.entity_id)
        return pipe

    def _behind_from(self, entities: Sequence[SubscriberEntity], event_number: int,
                     answers: list[Any]) -> dict[str, int]:
        """Subscriber ID -> checkpoint of those not yet at `event_number`; ParkedError if
        one of them is parked at or before it."""
        behind = {}
        for index, e in enumerate(entities):
            checkpoint, raw = int(answers[2 * index] or 0), answers[2 * index + 1]
            if checkpoint >= event_number:
                continue
            if raw is not None:
                parked = _parked_entity(e.subscriber_id, e.entity_type, e.entity_id, raw)
                if parked.event_number <= event_number:
                    raise ParkedError(e.subscriber_id, e.entity_type, e.entity_id,
                                      parked.event_number, parked.error)
            behind[e.subscriber_id] = checkpoint
        return behind

    # -- Due notices and the sweep -------------------------------------------------------

    def due_at_ms(self) -> float:
        """When a notice sent now is re-sent by the sweep if it was lost."""
        return time.time() * 1000 + self.redrive_after_ms

    def mark_due(self, entities: Iterable[SubscriberEntity], pipe: Any = None) -> None:
        """Records notices sent: if the subscriber still lags the entity when they are due
        (the notice was lost with a killed worker), the sweep sends them again. Kept until
        the checkpoint reaches the entity's head. Given a pipeline, the commands join it
        (the caller executes it); else they run now."""
        due_at = self.due_at_ms()
        own = pipe is None
        if own:
            pipe = self.client.pipeline(transaction=False)
        for e in entities:
            pipe.zadd(self._due(e.subscriber_id, e.partition), {e.member: due_at}, nx=True)
        if own:
            pipe.execute()

    def take_due(self, subscriber_ids: Sequence[str], subscribed: set[tuple[str, str]],
                 limit: int = 200, *, workers_alive: bool = True) -> DueNotices:
        """The due entities whose notice must be sent again: still lagging, not parked,
        not locked by a worker busy with them, and not waiting in the queue. A notice waits
        in the queue while no worker runs (`workers_alive` False: no worker beat lately),
        or when it was re-sent and no delivery of its subscriber began since (nothing
        takes the queue): it is not sent again, only looked at again. Each re-send of a
        notice not begun doubles the time to its next look (from `redrive_after_ms` up to
        64 times it); a begun delivery of the entity starts it over. Forgets the due
        entries that are done (or whose subscription is gone). `subscribed` holds the
        (entity type, subscriber ID) pairs that exist."""
        now_ms = time.time() * 1000
        slots = [(s, p) for s in subscriber_ids for p in range(self.keys.partitions)]
        pipe = self.client.pipeline(transaction=False)
        for subscriber_id, partition in slots:
            pipe.zrangebyscore(self._due(subscriber_id, partition), "-inf", now_ms, 0, limit)
        due = []
        for (subscriber_id, partition), members in zip(slots, pipe.execute(), strict=True):
            for member in members:
                entity_type, _, entity_id = text(member).partition(":")
                due.append(SubscriberEntity(subscriber_id, entity_type, entity_id, partition))
        if not due:
            return DueNotices([], [])
        begun: dict[str, int] = {}
        for (subscriber_id, _), count in self.begun_counts(subscriber_ids).items():
            begun[subscriber_id] = begun.get(subscriber_id, 0) + count
        pipe = self.client.pipeline(transaction=False)
        for e in due:
            s, t, p = e.subscriber_id, e.entity_type, e.partition
            pipe.hget(self._checkpoints(s, t, p), e.entity_id)
            pipe.hget(self.keys.heads(t, p), e.entity_id)
            pipe.hexists(self._parked(s, t, p), e.entity_id)
            pipe.exists(self._lock(e))
            pipe.hget(self._resent(s, t, p), e.entity_id)
        answers = pipe.execute()
        found = DueNotices([], [])
        pipe = self.client.pipeline(transaction=False)
        for index, e in enumerate(due):
            checkpoint, head, parked, locked, resent = answers[5 * index : 5 * index + 5]
            due_key = self._due(e.subscriber_id, e.partition)
            resent_key = self._resent(e.subscriber_id, e.entity_type, e.partition)
            if parked or int(checkpoint or 0) >= int(head or 0) or (
                e.entity_type, e.subscriber_id) not in subscribed:
                pipe.zrem(due_key, e.member)
                pipe.hdel(resent_key, e.entity_id)
                continue
            times, _, began_then = text(resent or "0 -").partition(" ")
            sends, began = int(times), str(begun[e.subscriber_id])
            if locked:
                pass
            elif not workers_alive or (sends and began == began_then):
                found.waiting.append(e)
            else:
                found.resend.append(e)
                sends += 1
                pipe.hset(resent_key, e.entity_id, f"{sends} {began}")
            later = now_ms + self.redrive_after_ms * 2 ** min(sends, RESEND_DOUBLINGS)
            pipe.zadd(due_key, {e.member: later}, xx=True)
        pipe.execute()
        return found

    def begun_counts(self, subscriber_ids: Sequence[str]) -> dict[tuple[str, int], int]:
        """How many deliveries workers began per (subscriber ID, partition) (begin.lua
        counts them): while a count stands still, nothing takes that queue."""
        slots = [(s, p) for s in subscriber_ids for p in range(self.keys.partitions)]
        pipe = self.client.pipeline(transaction=False)
        for subscriber_id, partition in slots:
            pipe.get(self._started(subscriber_id, partition))
        return {slot: int(n or 0) for slot, n in zip(slots, pipe.execute(), strict=True)}

    def deliveries_begun(self, subscriber_id: str) -> int:
        """How many deliveries of the subscriber workers began, over its partitions."""
        return sum(self.begun_counts([subscriber_id]).values())

    def due_count(self, subscriber_id: str) -> int:
        """Notices of the subscriber waiting to be seen handled (0 once it is idle)."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.zcard(self._due(subscriber_id, partition))
        return sum(int(n) for n in pipe.execute())

    # -- Catch-up ------------------------------------------------------------------------

    def is_caught_up(self, entity_type: str, subscriber_id: str) -> bool:
        return bool(self.client.sismember(self._caught_up(entity_type), subscriber_id))

    def catch_up_cursor(self, entity_type: str, subscriber_id: str) -> str | None:
        cursor = self.client.get(self._cursor(entity_type, subscriber_id))
        return text(cursor) if cursor else None

    def save_catch_up_cursor(self, entity_type: str, subscriber_id: str, token: str) -> None:
        self.client.set(self._cursor(entity_type, subscriber_id), token)

    def finish_catch_up(self, entity_type: str, subscriber_id: str) -> None:
        # Two keys of different slots: the cursor goes first, so a crash in between only
        # hands the history over again (duplicates are skipped), never leaves a cursor.
        self.client.delete(self._cursor(entity_type, subscriber_id))
        self.client.sadd(self._caught_up(entity_type), subscriber_id)

    def mark_caught_up(self, entity_type: str, subscriber_id: str) -> None:
        """Records the subscriber as handed the history without handing it (it starts
        from now on)."""
        self.client.sadd(self._caught_up(entity_type), subscriber_id)

    # -- Reading and repairing (admin) ---------------------------------------------------

    def checkpoint(self, e: SubscriberEntity) -> int:
        value = self.client.hget(
            self._checkpoints(e.subscriber_id, e.entity_type, e.partition), e.entity_id
        )
        return int(value) if value is not None else 0

    def checkpoints(self, subscriber_id: str, entity_type: str) -> dict[str, int]:
        """Every entity's checkpoint for the subscriber (entities never handled are absent)."""
        return {
            text(entity_id): int(number)
            for page in self._per_partition("hgetall", subscriber_id, entity_type,
                                            self._checkpoints)
            for entity_id, number in page.items()
        }

    def missed(self, subscriber_id: str, entity_type: str) -> int:
        """How many events of the type the subscriber could not get: removed (truncated
        and scavenged) before it handled them, e.g. as it was added after the scavenger
        ran. Counted where delivery starts past them (begin.lua)."""
        return sum(int(n) for n in self._per_partition("get", subscriber_id, entity_type,
                                                       self._missed) if n is not None)

    def least_handled(self, subscriber_ids: Sequence[str], entity_type: str, partition: int,
                      entity_ids: Sequence[str]) -> list[int]:
        """For each entity (of one partition), the lowest checkpoint among the subscribers
        (0 where one never handled it): what the scavenger must keep after. One round trip."""
        least = [NONE_WAITING] * len(entity_ids)
        if not subscriber_ids:
            return least
        pipe = self.client.pipeline(transaction=False)
        for subscriber_id in subscriber_ids:
            pipe.hmget(self._checkpoints(subscriber_id, entity_type, partition), entity_ids)
        for values in pipe.execute():
            least = [min(low, int(v) if v is not None else 0) for low, v in zip(least, values,
                                                                                 strict=True)]
        return least

    def move_checkpoints(self, subscriber_id: str, entity_type: str,
                         numbers: dict[str, int]) -> None:
        """Marks entities' events up to the given numbers handled without handling them
        (a subscriber that starts from now; benchmarks). Never moves a checkpoint back."""
        keys = {
            entity_id: self._checkpoints(
                subscriber_id, entity_type, self.keys.partition(entity_type, entity_id)
            )
            for entity_id in numbers
        }
        pipe = self.client.pipeline(transaction=False)
        for entity_id, key in keys.items():
            pipe.hget(key, entity_id)
        current = dict(zip(keys, pipe.execute(), strict=True))
        pipe = self.client.pipeline(transaction=False)
        for entity_id, key in keys.items():
            pipe.hset(key, entity_id, max(numbers[entity_id], int(current[entity_id] or 0)))
        pipe.execute()

    def parked(self, subscriber_id: str, entity_type: str) -> list[ParkedEntity]:
        """Entities parked for the subscriber, oldest first."""
        return sorted(
            (
                _parked_entity(subscriber_id, entity_type, text(entity_id), raw)
                for page in self._per_partition("hgetall", subscriber_id, entity_type,
                                                self._parked)
                for entity_id, raw in page.items()
            ),
            key=lambda item: (item.parked_at, item.entity_id),
        )

    def unpark(self, e: SubscriberEntity, *, skip: bool) -> ParkedEntity:
        """Unparks the entity: delivery starts again at the failed event, or after it with
        `skip`. The caller sends the notice (it is marked due here)."""
        parked_key = self._parked(e.subscriber_id, e.entity_type, e.partition)
        raw = self.client.hget(parked_key, e.entity_id)
        if raw is None:
            raise NotParkedError(
                f"{e.entity_type} {e.entity_id!r} is not parked for subscriber "
                f"{e.subscriber_id!r}"
            )
        entity = _parked_entity(e.subscriber_id, e.entity_type, e.entity_id, raw)
        pipe = self.client.pipeline(transaction=True)  # one slot: the partition's tag
        if skip:
            pipe.hset(self._checkpoints(e.subscriber_id, e.entity_type, e.partition),
                      e.entity_id, entity.event_number)
        pipe.hdel(self._failures(e.subscriber_id, e.entity_type, e.partition), e.entity_id)
        pipe.hdel(self._retry_at(e.subscriber_id, e.entity_type, e.partition), e.entity_id)
        pipe.hdel(parked_key, e.entity_id)
        pipe.zadd(self._due(e.subscriber_id, e.partition), {e.member: self.due_at_ms()},
                  nx=True)
        pipe.execute()
        self._tell_waiters(e, "unparked")
        return entity

    def forget(self, subscriber_id: str, entity_type: str) -> None:
        """Drops the subscriber's checkpoints, failures and parked entities of the type
        (a replay starts it over)."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.delete(self._checkpoints(subscriber_id, entity_type, partition))
            pipe.delete(self._failures(subscriber_id, entity_type, partition))
            pipe.delete(self._retry_at(subscriber_id, entity_type, partition))
            pipe.delete(self._parked(subscriber_id, entity_type, partition))
            pipe.delete(self._missed(subscriber_id, entity_type, partition))
            pipe.delete(self._resent(subscriber_id, entity_type, partition))
        pipe.execute()

    # -- Rebuild: pause, running handlers, record -----------------------------------------

    def _paused(self, subscriber_id: str, partition: int) -> str:
        return f"{self.keys.tag(partition)}:paused:{subscriber_id}"

    def _rebuild(self, subscriber_id: str) -> str:
        return f"{self.keys.prefix}:rebuild:{subscriber_id}"

    @functools.cached_property
    def _pause(self) -> Script:
        return Script(self.client, "pause")

    def _pause_call(self, subscriber_id: str, partition: int, token: str, action: str,
                    ms: int | None = None) -> Any:
        """Runs pause.lua on the subscriber's pause in the partition (`ms`: its time to live,
        for hold and renew)."""
        ttl = {} if ms is None else {"ms": ms}
        return self._pause(PAUSE.keys.pack(paused=self._paused(subscriber_id, partition)),
                           PAUSE.args.pack(token=token, action=action, **ttl))

    def hold_pause(self, subscriber_id: str, token: str, pause_ms: int) -> bool:
        """Pauses the subscriber on every partition for `pause_ms` (unless renewed): no
        worker begins any of its entities meanwhile (begin.lua answers PAUSED). False, and
        nothing held, when another token holds it."""
        for partition in range(self.keys.partitions):
            if not self._pause_call(subscriber_id, partition, token, "hold", ms=pause_ms):
                self.lift_pause(subscriber_id, token, range(partition))
                return False
        return True

    def renew_pause(self, subscriber_id: str, token: str, pause_ms: int) -> bool:
        """Gives the pause `pause_ms` more; False when `token` no longer holds it all (it
        expired: workers may have begun entities since)."""
        return all(
            self._pause_call(subscriber_id, partition, token, "renew", ms=pause_ms)
            for partition in range(self.keys.partitions)
        )

    def lift_pause(self, subscriber_id: str, token: str,
                   partitions: Iterable[int] | None = None) -> None:
        """Lets workers begin the subscriber's entities again (where `token` holds it)."""
        for partition in range(self.keys.partitions) if partitions is None else partitions:
            self._pause_call(subscriber_id, partition, token, "lift")

    def paused_by(self, subscriber_id: str) -> str | None:
        """The token of the rebuild pausing the subscriber (None: not paused)."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.get(self._paused(subscriber_id, partition))
        return next((text(token) for token in pipe.execute() if token), None)

    def locked(self, subscriber_id: str) -> list[SubscriberEntity]:
        """The subscriber's entities a worker holds the lock of (a handler may be running):
        one SCAN of the keyspace (of each master on a cluster)."""
        start = f"{self.keys.prefix}:{{"
        middle = f"}}:lock:{subscriber_id}:"
        partition_of = {self.keys.tag(p): p for p in range(self.keys.partitions)}
        found = []
        for key in self.client.scan_iter(match=f"{start}*{middle}*", count=1000):
            tag, _, rest = text(key).partition(middle)
            entity_type, _, entity_id = rest.partition(":")
            partition = partition_of.get(tag + "}")
            if partition is None:
                continue
            e = self.entity(subscriber_id, entity_type, entity_id)
            if e.partition == partition and self._lock(e) == text(key):
                found.append(e)
        return found

    def still_locked(self, entities: Sequence[SubscriberEntity]) -> list[SubscriberEntity]:
        """Those of the entities whose lock is still held."""
        pipe = self.client.pipeline(transaction=False)
        for e in entities:
            pipe.exists(self._lock(e))
        return [e for e, held in zip(entities, pipe.execute(), strict=True) if held]

    def start_over(self, subscriber_id: str, entity_type: str) -> None:
        """Forgets the subscriber's checkpoints, failures and parked entities of the type,
        and any catch-up in progress: the caller hands it the history again."""
        self.forget(subscriber_id, entity_type)
        self.finish_catch_up(entity_type, subscriber_id)

    def record_rebuild(self, record: RebuildRecord) -> None:
        """Kept until `clear_rebuild`: a rebuild that died halfway stays visible."""
        self.client.set(self._rebuild(record.subscriber_id), json.dumps(asdict(record)))

    def rebuild_record(self, subscriber_id: str) -> RebuildRecord | None:
        raw = self.client.get(self._rebuild(subscriber_id))
        return None if raw is None else RebuildRecord(**json.loads(text(raw)))

    def clear_rebuild(self, subscriber_id: str) -> None:
        self.client.delete(self._rebuild(subscriber_id))

    def _per_partition(self, command: str, subscriber_id: str, entity_type: str,
                       key: Any) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            getattr(pipe, command)(key(subscriber_id, entity_type, partition))
        return list(pipe.execute())


def _by_partition(entities: Sequence[SubscriberEntity], *values: Sequence[Any]
                  ) -> list[list[int]]:
    """The entities' indexes by partition, partitions in the order first met: a script call
    takes one subscriber's entities of one type and partition (one slot). ValueError for
    entities of another subscriber or type than the first's, or `values` (one per entity)
    of another length."""
    if any(len(v) != len(entities) for v in values):
        raise ValueError(f"{[len(v) for v in values]} values for {len(entities)} entities")
    first = entities[0]
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(entities):
        if (e.subscriber_id, e.entity_type) != (first.subscriber_id, first.entity_type):
            raise ValueError(f"{e} is not of the group of {first}")
        groups.setdefault(e.partition, []).append(i)
    return list(groups.values())


_T = TypeVar("_T")


def _in_order(count: int, answers: Sequence[tuple[list[int], list[_T]]]) -> list[_T]:
    """Answers given per partition group (indexes, answers) back in the entities' order."""
    ordered: list[_T | None] = [None] * count
    for group, replies in answers:
        if len(group) != len(replies):
            raise ValueError(f"{len(replies)} answers for {len(group)} entities")
        for i, reply in zip(group, replies, strict=True):
            ordered[i] = reply
    return cast(list[_T], ordered)


def _parked_entity(subscriber_id: str, entity_type: str, entity_id: str,
                   raw: Any) -> ParkedEntity:
    record = json.loads(text(raw))
    return ParkedEntity(
        subscriber_id=subscriber_id,
        entity_type=entity_type,
        entity_id=entity_id,
        event_number=int(record["event_number"]),
        error=str(record["error"]),
        attempts=int(record["attempts"]),
        parked_at=str(record["parked_at"]),
        traceback=str(record.get("traceback", "")),
    )
