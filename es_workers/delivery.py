"""Handling a notice "entity X of type T has events up to N" for one subscriber.

The bus only says which entity moved; the subscriber reads the events itself, from its
checkpoint on. That is what keeps the guarantees whatever Dramatiq does to the notices
(duplicates, reordering, retries behind newer messages):

- order per entity: events are read from the entity stream in order, under a per
  (subscriber, entity) lock, so one entity is never handled by two workers at once;
- no handling twice past the checkpoint: the checkpoint moves after each handled event, in
  the same script that checks the lock is still ours;
- no loss: a notice at or below the checkpoint is skipped, one beyond it handles every
  event in between; notices that never arrive are re-sent by the publisher's sweep;
- a failing handler is retried with backoff, then parks its entity for that subscriber
  only (others go on), until `retry` or `skip`.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import EsError
from .event import Event
from .upgrade import apply_upgrades

if TYPE_CHECKING:
    from .storage.keys import RedisKeys
    from .storage.redis import RedisStorage
    from .store import Store

log = logging.getLogger("es_workers.delivery")

_SCRIPTS = resources.files("es_workers.storage")
_BEGIN_LUA = _SCRIPTS.joinpath("begin.lua").read_text()
_CHECKPOINT_LUA = _SCRIPTS.joinpath("checkpoint.lua").read_text()
_UNLOCK_LUA = _SCRIPTS.joinpath("unlock.lua").read_text()


@dataclass(frozen=True)
class DeliveryOptions:
    """How hard to retry a failing handler before parking, and the lock lease.

    Defaults are minutes, not Dramatiq's days: a handler failing 5 times over ~3 s is
    parked and shown in `es-workers status`.
    """

    max_attempts: int = 5
    min_backoff_ms: int = 200
    max_backoff_ms: int = 10_000
    lock_ms: int = 15_000  # a crashed worker's entities wait this long before another takes them
    redrive_after_ms: int = 10_000  # a notice not seen handled by then is sent again

    def backoff_ms(self, attempt: int) -> int:
        delay = min(self.max_backoff_ms, self.min_backoff_ms * 2 ** max(0, attempt - 1))
        return int(delay * random.uniform(0.8, 1.2))


Resend = Callable[[str, str, str, "int | None", int], None]
"""resend(subscriber_id, entity_type, entity_id, event_number, delay_ms)"""


# begin.lua's answers
_NOTHING_TO_DO = 1
_BUSY = 2


def due_member(entity_type: str, entity_id: str) -> str:
    return f"{entity_type}:{entity_id}"


def mark_due(
    client: Any, keys: RedisKeys, subscriber_id: str, entity_type: str,
    entity_ids: Iterable[str], due_at_ms: float,
) -> None:
    """Records notices about to be sent: if the subscriber still lags the entity at
    `due_at_ms` (the notice was lost with a killed worker), the publisher's sweep sends
    it again. Kept until the checkpoint reaches the entity's head."""
    pipe = client.pipeline(transaction=False)
    for entity_id in entity_ids:
        partition = keys.partition(entity_type, entity_id)
        pipe.zadd(keys.due(subscriber_id, partition),
                  {due_member(entity_type, entity_id): due_at_ms}, nx=True)
    pipe.execute()


class Deliverer:
    """Runs a subscriber's handler for the events of one entity it has not handled yet."""

    def __init__(self, store: Store, storage: RedisStorage, options: DeliveryOptions) -> None:
        self.store = store
        self.storage = storage
        self.keys = storage.keys
        self.options = options
        self._begin = storage.client.register_script(_BEGIN_LUA)
        self._checkpoint = storage.client.register_script(_CHECKPOINT_LUA)
        self._unlock = storage.client.register_script(_UNLOCK_LUA)

    def deliver(
        self,
        subscriber_id: str,
        handler: Callable[[Event], Any],
        entity_type: str,
        entity_id: str,
        event_number: int | None,
        resend: Resend,
    ) -> None:
        keys = self.keys
        partition = keys.partition(entity_type, entity_id)
        lock = keys.lock(subscriber_id, entity_type, entity_id)
        token = uuid.uuid4().hex
        # One round trip: skip a parked entity or an old notice, else take the lock and read
        # the checkpoint under it (the notice's view may be stale).
        state, checkpoint = self._begin(
            keys=[
                keys.checkpoints(subscriber_id, entity_type, partition),
                keys.parked(subscriber_id, entity_type, partition),
                keys.heads(entity_type, partition),
                lock,
            ],
            args=[entity_id, -1 if event_number is None else event_number, token,
                  self.options.lock_ms],
        )
        if state == _NOTHING_TO_DO:
            return  # parked entities wait for retry/skip; old notices are duplicates
        if state == _BUSY:
            # Another worker is on this entity; it may stop short of this event, so look again
            # shortly. The re-sent notice is skipped if that worker got this far.
            resend(subscriber_id, entity_type, entity_id, event_number, random.randint(20, 80))
            return
        released = False
        try:
            released = self._handle_from(
                subscriber_id, handler, entity_type, entity_id, partition, lock, token,
                int(checkpoint), resend,
            )
        finally:
            if not released:
                self._unlock(keys=[lock], args=[token])

    def _handle_from(
        self,
        subscriber_id: str,
        handler: Callable[[Event], Any],
        entity_type: str,
        entity_id: str,
        partition: int,
        lock: str,
        token: str,
        checkpoint: int,
        resend: Resend,
    ) -> bool:
        """Handles the events after `checkpoint`, holding the lock. Returns True once the lock
        is no longer held: the last checkpoint released it, or it was lost."""
        keys = self.keys
        script_keys = [
            keys.checkpoints(subscriber_id, entity_type, partition),
            lock,
            keys.heads(entity_type, partition),
            keys.due(subscriber_id, partition),
            keys.failures(subscriber_id, entity_type, partition),
        ]
        member = due_member(entity_type, entity_id)
        labels = (subscriber_id, entity_type)
        upgrades = self.store.upgrades_for(entity_type)
        while True:
            read_up_to = checkpoint

            def stored(after: int) -> Iterator[Event]:
                nonlocal read_up_to
                for event in self.storage.read(entity_type, entity_id, after):
                    read_up_to = event.event_number
                    yield event

            # As Store.read, but knowing how far the storage was read: an upgrade may drop
            # events, and the checkpoint must pass the dropped ones too.
            events = apply_upgrades(stored(checkpoint), upgrades)
            unreadable: EsError | None = None
            try:
                upcoming = next(events, None)
            except EsError as error:  # a record we cannot read: retry, then park
                upcoming, unreadable = None, error
            handled = checkpoint
            while upcoming is not None:
                event = upcoming
                started = time.perf_counter()
                try:
                    handler(event)
                except Exception as error:
                    metrics.HANDLER_FAILURES.labels(*labels).inc()
                    self._failed(subscriber_id, entity_type, entity_id, event.event_number,
                                 error, resend)
                    return False
                metrics.HANDLER_SECONDS.labels(*labels).observe(time.perf_counter() - started)
                metrics.HANDLED.labels(*labels).inc()
                try:
                    upcoming = next(events, None)  # read ahead: is this the last one?
                except EsError as error:
                    upcoming, unreadable = None, error
                handled = event.event_number
                if upcoming is None and unreadable is None:
                    break  # the last one read: checkpointed below, with the dropped ones
                if not self._commit(script_keys, entity_id, handled, token, member, False):
                    return self._lost_lock(subscriber_id, entity_type, entity_id, handled)
            if unreadable is not None:
                if handled > checkpoint and not self._commit(
                    script_keys, entity_id, handled, token, member, False
                ):
                    return self._lost_lock(subscriber_id, entity_type, entity_id, handled)
                self._failed(subscriber_id, entity_type, entity_id, handled + 1, unreadable,
                             resend)
                return False
            handled = max(handled, read_up_to)
            if handled == checkpoint:
                return False  # nothing to read after all
            # The last event read: record it and release the lock in one step, unless more
            # events were written meanwhile: then read on.
            head, released = self._checkpoint(
                keys=script_keys,
                args=[entity_id, handled, token, self.options.lock_ms, member, 1],
            )
            if int(head) < 0:
                return self._lost_lock(subscriber_id, entity_type, entity_id, handled)
            if released:
                return True
            checkpoint = handled

    def _commit(
        self, script_keys: list[str], entity_id: str, number: int, token: str, member: str,
        release: bool,
    ) -> bool:
        """Moves the checkpoint to `number`; False if the lock is no longer ours."""
        head, _ = self._checkpoint(
            keys=script_keys,
            args=[entity_id, number, token, self.options.lock_ms, member, int(release)],
        )
        return int(head) >= 0

    def _lost_lock(
        self, subscriber_id: str, entity_type: str, entity_id: str, event_number: int
    ) -> bool:
        log.warning(
            "subscriber %s lost the lock on %s %r after event %d (handler slower than "
            "lock_ms=%d?); stopping, another worker goes on",
            subscriber_id, entity_type, entity_id, event_number, self.options.lock_ms,
        )
        return True

    def _failed(
        self,
        subscriber_id: str,
        entity_type: str,
        entity_id: str,
        event_number: int,
        error: BaseException,
        resend: Resend,
    ) -> None:
        client, keys = self.storage.client, self.keys
        partition = keys.partition(entity_type, entity_id)
        failures = keys.failures(subscriber_id, entity_type, partition)
        attempts = int(client.hincrby(failures, entity_id, 1))
        description = f"{type(error).__name__}: {error}"
        if attempts < self.options.max_attempts:
            delay = self.options.backoff_ms(attempts)
            log.warning(
                "subscriber %s failed on %s %r event %d (attempt %d of %d), retrying in %d ms: %s",
                subscriber_id, entity_type, entity_id, event_number, attempts,
                self.options.max_attempts, delay, description,
            )
            resend(subscriber_id, entity_type, entity_id, None, delay)
            return
        record = {
            "event_number": event_number,
            "error": description,
            "attempts": attempts,
            "parked_at": datetime.now(UTC).isoformat(),
        }
        pipe = client.pipeline(transaction=True)
        pipe.hset(keys.parked(subscriber_id, entity_type, partition), entity_id, json.dumps(record))
        pipe.hdel(failures, entity_id)
        pipe.zrem(keys.due(subscriber_id, partition), due_member(entity_type, entity_id))
        pipe.execute()
        metrics.PARKED.labels(subscriber_id).inc()
        log.error(
            "subscriber %s parked %s %r at event %d after %d attempts: %s "
            "(es-workers parked retry|skip)",
            subscriber_id, entity_type, entity_id, event_number, attempts, description,
        )
