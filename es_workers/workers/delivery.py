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
  only (others go on), until `retry` or `skip`. So does an event that cannot be read.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..backoff import Backoff
from ..errors import DecodeError
from ..event import Event
from ..redis.state import BUSY, NOTHING_TO_DO, SubscriberEntity, SubscriberState
from ..tracing import handler_call
from ..upgrade import Reader, Reading

log = logging.getLogger("es_workers.delivery")


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

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.min_backoff_ms, self.max_backoff_ms)


@dataclass(frozen=True)
class Notice:
    """What a subscriber actor is sent: the entity has events up to `event_number` (None:
    up to its head)."""

    subscriber_id: str
    entity_type: str
    entity_id: str
    event_number: int | None


Resend = Callable[[Notice, int], None]
"""resend(notice, delay_ms): send the notice again later."""


class _Stop(Exception):
    """Ends a delivery early; `released` tells whether the lock is already gone."""

    def __init__(self, *, released: bool) -> None:
        self.released = released


class Deliverer:
    """Runs a subscriber's handler for the events of one entity it has not handled yet."""

    def __init__(self, reader: Reader, state: SubscriberState, options: DeliveryOptions) -> None:
        self.reader = reader
        self.state = state
        self.options = options

    def deliver(self, notice: Notice, handler: Callable[[Event], Any], resend: Resend) -> None:
        e = self.state.entity(notice.subscriber_id, notice.entity_type, notice.entity_id)
        token = uuid.uuid4().hex
        begun = self.state.begin(e, notice.event_number, token, self.options.lock_ms)
        if begun.state == NOTHING_TO_DO:
            return  # parked entities wait for retry/skip; old notices are duplicates
        if begun.state == BUSY:
            # Another worker is on this entity; it may stop short of this event, so look again
            # shortly. The re-sent notice is skipped if that worker got this far.
            resend(notice, random.randint(20, 80))
            return
        run = _Run(self, e, token, handler, resend)
        released = False
        try:
            released = run.handle_from(begun.checkpoint)
        finally:
            if not released:
                self.state.unlock(e, token)


class _Run:
    """One delivery: the handler run over an entity's unhandled events, holding its lock."""

    def __init__(self, deliverer: Deliverer, e: SubscriberEntity, token: str,
                 handler: Callable[[Event], Any], resend: Resend) -> None:
        self.reader, self.state, self.options = (
            deliverer.reader, deliverer.state, deliverer.options
        )
        self.e = e
        self.token = token
        self.handler = handler
        self.resend = resend
        self.labels = (e.subscriber_id, e.entity_type)

    def handle_from(self, checkpoint: int) -> bool:
        """Handles the events after `checkpoint`. Returns True once the lock is no longer
        held: the last checkpoint released it, or it was lost."""
        try:
            while True:
                reading = self.reader.read(self.e.entity_type, self.e.entity_id, checkpoint)
                last = self._handle_all(reading, checkpoint)
                if last == checkpoint:
                    return False  # nothing to read after all
                # The last event read: record it and release the lock in one step, unless
                # more events were written meanwhile: then read on.
                if self._commit(last, release=True):
                    return True
                checkpoint = last
        except _Stop as stop:
            return stop.released

    def _handle_all(self, reading: Reading, checkpoint: int) -> int:
        """Handles what `reading` yields, checkpointing each event but the last (which the
        caller checkpoints with the release). Returns the last stored number read."""
        handled = checkpoint
        try:
            for event, more in _with_lookahead(reading):
                self._call(event)
                handled = event.event_number
                if more:
                    self._commit(handled, release=False)
        except DecodeError as unreadable:  # a record we cannot read: retry, then park
            self._failed(handled + 1, unreadable)
            raise _Stop(released=False) from None
        # An upgrade may drop events: the checkpoint passes the dropped ones too.
        return max(handled, reading.position)

    def _call(self, event: Event) -> None:
        started = time.perf_counter()
        try:
            with handler_call(self.e.subscriber_id, event):
                self.handler(event)
        except Exception as error:
            metrics.HANDLER_FAILURES.labels(*self.labels).inc()
            self._failed(event.event_number, error)
            raise _Stop(released=False) from None
        metrics.HANDLER_SECONDS.labels(*self.labels).observe(time.perf_counter() - started)
        metrics.HANDLED.labels(*self.labels).inc()

    def _commit(self, event_number: int, *, release: bool) -> bool:
        """Moves the checkpoint; True if that released the lock. Stops if it was lost."""
        committed = self.state.commit(
            self.e, event_number, self.token, self.options.lock_ms, release=release
        )
        if committed.lost:
            log.warning(
                "subscriber %s lost the lock on %s %r after event %d (handler slower than "
                "lock_ms=%d?); stopping, another worker goes on", self.e.subscriber_id,
                self.e.entity_type, self.e.entity_id, event_number, self.options.lock_ms,
            )
            raise _Stop(released=True)
        return committed.released

    def _failed(self, event_number: int, error: BaseException) -> None:
        e, options = self.e, self.options
        attempts = self.state.record_failure(e)
        description = f"{type(error).__name__}: {error}"
        if attempts < options.max_attempts:
            delay = options.backoff.delay_ms(attempts)
            log.warning(
                "subscriber %s failed on %s %r event %d (attempt %d of %d), retrying in %d ms",
                e.subscriber_id, e.entity_type, e.entity_id, event_number, attempts,
                options.max_attempts, delay, exc_info=error,
            )
            self.resend(Notice(e.subscriber_id, e.entity_type, e.entity_id, None), delay)
            return
        self.state.park(e, event_number, description, attempts,
                        "".join(traceback.format_exception(error)))
        metrics.PARKED.labels(e.subscriber_id).inc()
        log.error(
            "subscriber %s parked %s %r at event %d after %d attempts "
            "(es-workers parked retry|skip)", e.subscriber_id, e.entity_type, e.entity_id,
            event_number, attempts, exc_info=error,
        )


def _with_lookahead(reading: Reading) -> Iterator[tuple[Event, bool]]:
    """Each event with whether another one follows. A read error is raised only after the
    events before it were yielded (as followed by more: the caller checkpoints them)."""
    try:
        current = next(reading)
    except StopIteration:
        return
    while True:
        try:
            upcoming = next(reading)
        except StopIteration:
            yield current, False
            return
        except DecodeError:
            yield current, True
            raise
        yield current, True
        current = upcoming
