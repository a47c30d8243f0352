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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import EsError
from .event import Event
from .upgrade import apply_upgrades

if TYPE_CHECKING:
    from .storage.redis import RedisStorage
    from .store import Store

log = logging.getLogger("es_workers.delivery")

_SCRIPTS = resources.files("es_workers.storage")
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


def due_member(entity_type: str, entity_id: str) -> str:
    return f"{entity_type}:{entity_id}"


class Deliverer:
    """Runs a subscriber's handler for the events of one entity it has not handled yet."""

    def __init__(self, store: Store, storage: RedisStorage, options: DeliveryOptions) -> None:
        self.store = store
        self.storage = storage
        self.keys = storage.keys
        self.options = options
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
        keys, client = self.keys, self.storage.client
        partition = keys.partition(entity_type, entity_id)
        checkpoints = keys.checkpoints(subscriber_id, entity_type, partition)
        parked_key = keys.parked(subscriber_id, entity_type, partition)
        pipe = client.pipeline(transaction=False)
        pipe.hget(checkpoints, entity_id)
        pipe.hexists(parked_key, entity_id)
        pipe.hget(keys.heads(entity_type, partition), entity_id)
        raw_checkpoint, parked, raw_head = pipe.execute()
        checkpoint = int(raw_checkpoint or 0)
        target = int(raw_head or 0) if event_number is None else event_number
        if parked or checkpoint >= target:
            return  # parked entities wait for retry/skip; old notices are duplicates
        lock = keys.lock(subscriber_id, entity_type, entity_id)
        token = uuid.uuid4().hex
        if not client.set(lock, token, nx=True, px=self.options.lock_ms):
            # Another worker is on this entity; it may stop short of this event, so look again
            # shortly. The re-sent notice is skipped if that worker got this far.
            resend(subscriber_id, entity_type, entity_id, event_number, random.randint(20, 80))
            return
        try:
            self._handle_from(
                subscriber_id, handler, entity_type, entity_id, partition, lock, token, resend
            )
        finally:
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
        resend: Resend,
    ) -> None:
        keys, client = self.keys, self.storage.client
        checkpoints = keys.checkpoints(subscriber_id, entity_type, partition)
        script_keys = [
            checkpoints,
            lock,
            keys.heads(entity_type, partition),
            keys.due(subscriber_id, partition),
            keys.failures(subscriber_id, entity_type, partition),
        ]
        member = due_member(entity_type, entity_id)
        labels = (subscriber_id, entity_type)
        while True:
            # Read the checkpoint under the lock: the notice's view may be stale.
            checkpoint = int(client.hget(checkpoints, entity_id) or 0)
            head = checkpoint
            read_up_to = checkpoint

            def stored(after: int) -> Iterator[Event]:
                nonlocal read_up_to
                for event in self.storage.read(entity_type, entity_id, after):
                    read_up_to = event.event_number
                    yield event

            # As Store.read, but knowing how far the storage was read: an upgrade may drop
            # events, and the checkpoint must pass the dropped ones too.
            events = apply_upgrades(stored(checkpoint), self.store.upgrades_for(entity_type))
            while True:
                try:
                    event = next(events)
                except StopIteration:
                    if read_up_to > checkpoint:  # the last events read were dropped
                        head = int(self._checkpoint(
                            keys=script_keys,
                            args=[entity_id, read_up_to, token, self.options.lock_ms, member],
                        ))
                        if head < 0:
                            return
                        checkpoint = read_up_to
                    break
                except EsError as error:  # a record we cannot read: retry, then park
                    self._failed(subscriber_id, entity_type, entity_id, checkpoint + 1, error,
                                 resend)
                    return
                started = time.perf_counter()
                try:
                    handler(event)
                except Exception as error:
                    metrics.HANDLER_FAILURES.labels(*labels).inc()
                    self._failed(subscriber_id, entity_type, entity_id, event.event_number,
                                 error, resend)
                    return
                metrics.HANDLER_SECONDS.labels(*labels).observe(time.perf_counter() - started)
                metrics.HANDLED.labels(*labels).inc()
                head = int(self._checkpoint(
                    keys=script_keys,
                    args=[entity_id, event.event_number, token, self.options.lock_ms, member],
                ))
                if head < 0:
                    log.warning(
                        "subscriber %s lost the lock on %s %r after event %d (handler slower "
                        "than lock_ms=%d?); stopping, another worker goes on",
                        subscriber_id, entity_type, entity_id, event.event_number,
                        self.options.lock_ms,
                    )
                    return
                checkpoint = event.event_number
            if head <= checkpoint:
                return  # caught up with what was written while we handled

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
