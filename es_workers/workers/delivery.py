"""Handling a notice "entity X of type T has events up to N" for one subscriber.

The bus only says which entity moved; the subscriber reads the events itself, from its
checkpoint on. That is what keeps the guarantees whatever Dramatiq does to the notices
(duplicates, reordering, retries behind newer messages):

- order per entity: events are read from the entity stream in order, under a per
  (subscriber, entity) lock, so one entity is never handled by two workers at once; the
  lock's lease is renewed while the handler runs, however long, and a holder that lost it
  is fenced off (see `lease`);
- no handling twice past the checkpoint: the checkpoint moves after each handled event, in
  the same script that checks the lock is still ours;
- no loss: a notice at or below the checkpoint is skipped, one beyond it handles every
  event in between; notices that never arrive are re-sent by the publisher's sweep;
- a failing handler (any exception, SystemExit and KeyboardInterrupt included, or running
  past its time limit) is retried with backoff, then parks its entity for that subscriber
  only (others go on), until `retry` or `skip`. So does an event that cannot be read. No
  attempt starts before its backoff has passed, however many notices arrive meanwhile.

A notice may name several entities, of up to a few partitions (the publisher packs a
round's notices per subscriber): they are locked and their first events read in one round
trip (a script call per partition, on one pipeline), then handled in rounds, each round
one event per entity and one round trip recording all their checkpoints (and releasing
the locks of those caught up). So a backlog of single-event entities costs two round trips
per notice, not three per entity, and one of many-event entities a round trip per round,
not per event.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq.middleware import Interrupt

from .. import metrics
from ..backoff import Backoff
from ..errors import DecodeError
from ..event import Event
from ..ports import (
    BACKING_OFF,
    BUSY,
    NOT_A_STREAM,
    READY,
    Begun,
    Committed,
    Failure,
    SubscriberEntity,
    SubscriberState,
)
from ..tracing import Handling, handler_call
from ..upgrade import Reader, Reading
from .lease import HandlerCall, HandlerTimeLimitExceeded, Lease, LeaseLost, keeper

log = logging.getLogger("es_workers.delivery")


@dataclass(frozen=True)
class DeliveryOptions:
    """How hard to retry a failing handler before parking, the lock lease, and how long a
    handler may run.

    Defaults are minutes, not Dramatiq's days: a handler failing 5 times over ~3 s is
    parked and shown in `es-workers status`.
    """

    max_attempts: int = 5
    min_backoff_ms: int = 200
    max_backoff_ms: int = 10_000
    lock_ms: int = 15_000  # a crashed worker's entities wait this long before another takes them
    handler_time_limit_ms: int = 60_000  # a handler running longer is stopped: a failed attempt

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


Resend = Callable[[Sequence[Notice], int], None]
"""resend(notices, delay_ms): send the notices (of one subscriber and entity type) again
later, in one message."""


READ_COUNT = 200
"""Events a delivery reads with its locks, shared by the entities of one notice (at least
MIN_READ_COUNT each); an entity with more is read on afterwards."""
MIN_READ_COUNT = 16
SHARE_AFTER_MS = 100
"""A delivery that has run this long hands the entities it has not started to new notices,
so that other workers share them (slow handlers)."""


class _Stop(Exception):
    """Ends a delivery early; `released` tells whether the lock is already gone."""

    def __init__(self, *, released: bool) -> None:
        self.released = released


class Deliverer:
    """Runs a subscriber's handler for the events of entities it has not handled yet."""

    def __init__(self, reader: Reader, state: SubscriberState, options: DeliveryOptions
                 ) -> None:
        self.reader = reader
        self.state = state
        self.options = options
        self.keeper = keeper()

    def deliver(self, notices: Sequence[Notice], handler: Callable[[Event], Any],
                resend: Resend) -> None:
        """Handles the notices (of one subscriber and entity type, of any partitions): all
        locked and read in one round trip, then handled in rounds, each round's checkpoints
        recorded in one more (see `_Batch`; a script call per partition, on one pipeline)."""
        group = [
            (self.state.entity(notice.subscriber_id, notice.entity_type, notice.entity_id),
             notice.event_number)
            for notice in notices
        ]
        _Batch(self, group, handler, resend).run()


class _Batch:
    """The entities of one delivery: begun together (locked and their
    first events read), then handled in rounds. Each round hands every entity its next
    event, then records all their checkpoints in one script call, before any of them gets
    the next one: each entity's events are handled in order, each checkpointed before the
    next (a crash repeats at most the last one handled), and a notice naming many entities
    costs a round trip per round rather than per event."""

    def __init__(self, deliverer: Deliverer, group: list[tuple[SubscriberEntity, int | None]],
                 handler: Callable[[Event], Any], resend: Resend) -> None:
        self.deliverer = deliverer
        self.state, self.options = deliverer.state, deliverer.options
        self.group = group
        self.handler = handler
        self.resend = resend
        self.token = uuid.uuid4().hex
        self.lease = Lease(self.state, self.token, self.options.lock_ms)

    def run(self) -> None:
        taken_at = time.monotonic()
        runs = self._begin()
        if not runs:
            return
        # Renewed from now on (before any event is decoded), until each is let go.
        self.deliverer.keeper.hold(self.lease, [run.e for run in runs], taken_at)
        try:
            self._rounds(runs)
        finally:
            self.deliverer.keeper.end(self.lease)
            held = [run for run in runs if not run.released]
            if held:
                self.state.unlock([run.e for run in held], self.token)

    def _begin(self) -> list[_Run]:
        """Locks the entities and reads their first events: a run for each one to handle."""
        entities = [e for e, _ in self.group]
        read_count = max(MIN_READ_COUNT, READ_COUNT // len(entities))
        begun = self.state.begin(entities, [n for _, n in self.group], self.token,
                                 self.options.lock_ms, read_count)
        runs = []
        paused = [e for (e, _), answer in zip(self.group, begun, strict=True) if answer.paused]
        if paused:
            # A rebuild holds the subscriber: the notices stay due, and the sweep (or the
            # rebuild's own notices) sends them again once it is over.
            self.state.mark_due(paused)
            return []
        for (e, number), answer in zip(self.group, begun, strict=True):
            if answer.state == BUSY:
                # Another worker is on this entity; it may stop short of this event, so look
                # again shortly. The re-sent notice is skipped if that worker got this far.
                self.resend([Notice(e.subscriber_id, e.entity_type, e.entity_id, number)],
                            random.randint(20, 80))
            elif answer.state in (READY, NOT_A_STREAM):
                runs.append(_Run(self, e, answer))
            elif answer.state == BACKING_OFF and number is None:
                # A retry notice early by the server's clock (hosts' clocks differ): again
                # when due. Notices of new events are dropped: the retry reads to the head.
                self.resend([Notice(e.subscriber_id, e.entity_type, e.entity_id, None)],
                            answer.retry_in_ms)
            # Else skipped: parked, an old notice, or a failure backing off (its retry
            # notice, or else its due entry, starts it when the backoff has passed).
        return runs

    def _rounds(self, runs: list[_Run]) -> None:
        """Rounds until every entity is caught up (or stopped). Past SHARE_AFTER_MS (slow
        handlers), or half the lock lease after the round's locks were taken or renewed,
        the entities a round has not reached are handed to new notices, so that other
        workers share them (and none is handled under a lock about to expire); past
        SHARE_AFTER_MS the batch goes on with one entity."""
        share_at = time.monotonic() + SHARE_AFTER_MS / 1000
        half_lease = self.options.lock_ms / 2000
        active = runs
        while active:
            steps: list[tuple[_Run, int, bool]] = []
            hand_back_at = min(share_at, time.monotonic() + half_lease)
            for index, run in enumerate(active):
                if index > 0 and time.monotonic() > hand_back_at:
                    self._hand_back(active[index:])
                    break
                try:
                    step = run.step()
                except _Stop as stop:
                    # Failed (its retry is sent) or lost: let it go now, not after the
                    # batch's last round, so that the retry does not find it busy.
                    if not stop.released:
                        self.state.unlock([run.e], self.token)
                    run.let_go()
                    continue
                if step is not None:
                    steps.append((run, *step))
            active = self._commit(steps)
            if len(active) > 1 and time.monotonic() > share_at:
                self._hand_back(active[1:])
                active = active[:1]

    def _hand_back(self, runs: list[_Run]) -> None:
        """Lets the entities go (their checkpoints are recorded) and sends them again, in
        two notices so that two workers share them."""
        self.state.unlock([run.e for run in runs], self.token)
        for run in runs:
            run.let_go()
        half = (len(runs) + 1) // 2
        for part in (runs[:half], runs[half:]):
            if part:
                self.resend([Notice(r.e.subscriber_id, r.e.entity_type, r.e.entity_id, None)
                             for r in part], 0)

    def _commit(self, steps: list[tuple[_Run, int, bool]]) -> list[_Run]:
        """Records the round's checkpoints (releasing the locks of entities caught up) in one
        round trip; returns the runs that go on."""
        if not steps:
            return []
        committed = self.state.commit(
            [run.e for run, _, _ in steps], [number for _, number, _ in steps], self.token,
            self.options.lock_ms, release=[release for _, _, release in steps],
        )
        return [run for (run, number, release), answer in zip(steps, committed, strict=True)
                if run.after_commit(answer, number, release)]


class _Run:
    """One entity's delivery: the handler run over its unhandled events, holding its lock,
    one event per round of its batch."""

    def __init__(self, batch: _Batch, e: SubscriberEntity, begun: Begun) -> None:
        deliverer = batch.deliverer
        self.reader, self.state, self.options = (
            deliverer.reader, deliverer.state, deliverer.options
        )
        self.keeper, self.lease, self.token = deliverer.keeper, batch.lease, batch.token
        self.e = e
        self.handler = batch.handler
        self.resend = batch.resend
        self.metrics = metrics.handler_metrics(e.subscriber_id, e.entity_type)
        self.released = False  # the lock is no longer ours to release (let go, or lost)
        self.committed = begun.checkpoint  # the last checkpoint recorded
        self.attempts = begun.attempts  # failed attempts at the next event so far
        # NOT_A_STREAM: the entity cannot be read (its events raise DecodeError at once):
        # retried, then parked, like an unreadable event.
        stored = self.state.begun_events(e, begun)
        self._read(self.reader.reading(e.entity_type, stored, begun.checkpoint))

    def _read(self, reading: Reading) -> None:
        self.reading = reading
        self.handled = reading.position
        self._ahead = _with_lookahead(reading)

    def let_go(self) -> None:
        """The lock is released, or lost: no longer renewed."""
        self.released = True
        self.lease.let_go(self.e)

    def step(self) -> tuple[int, bool] | None:
        """Handles the next event. Returns the checkpoint to record and whether it may be
        the entity's last (then the lock goes with it, if the entity is caught up); None
        when there is nothing to record. Raises _Stop when the handler failed or the event
        cannot be read (retried, then parked), or the lock is lost."""
        if not self.lease.holds(self.e):
            self._stop_unsure(self.handled + 1, "before")
        try:
            item = next(self._ahead, None)
        except DecodeError as unreadable:  # a record we cannot read: retry, then park
            self._failed(self.handled + 1, unreadable)
            raise _Stop(released=False) from None
        if item is None:
            # An upgrade may drop events: the checkpoint passes the dropped ones too.
            position = self.reading.position
            return (position, True) if position > self.committed else None
        event, more = item
        self._call(event)
        self.handled = event.event_number
        return (self.handled, False) if more else (
            max(self.handled, self.reading.position), True)

    def after_commit(self, committed: Committed, event_number: int, release: bool) -> bool:
        """Takes in a commit's answer; True when the entity goes on to another round."""
        if committed.lost:
            self._lost(event_number, "after")
            self.lease.lose(self.e)
            self.released = True
            return False
        self.committed = event_number
        self.attempts = 0
        if not release:
            return True
        if committed.released:
            self.let_go()
            return False
        # More events were written meanwhile (or the page ended): read on, still holding
        # the lock; events before a truncation are still the subscriber's to handle.
        stored = self.state.read_stored(self.e.entity_type, self.e.entity_id, event_number)
        self._read(self.reader.reading(self.e.entity_type, stored, event_number))
        return True

    def _call(self, event: Event) -> None:
        """Runs the handler, watched: interrupted past its time limit or if the lock is
        lost. Any exception it raises, BaseException included (SystemExit,
        KeyboardInterrupt: handler code, since signals reach only the main thread), is a
        failed attempt of this entity only; Dramatiq's own interrupts go on up."""
        started = time.perf_counter()
        # The span is around the watched call, so that the watchdog's interrupt lands in
        # the handler, and a failure (a parking too) is recorded on the span.
        with handler_call(self.e.subscriber_id, event, self.attempts + 1) as traced:
            call = self.keeper.call(self.lease, self.e, self.options.handler_time_limit_ms)
            try:
                with call:
                    self.handler(event)
            except BaseException as error:
                self._call_failed(event, call, error, traced)
        self.metrics.seconds.observe(time.perf_counter() - started)
        self.metrics.handled.inc()

    def _call_failed(self, event: Event, call: HandlerCall, error: BaseException,
                     traced: Handling) -> None:
        if call.interrupted is LeaseLost:
            traced.failed(error)
            self._stop_unsure(event.event_number, "during")
        if call.interrupted is HandlerTimeLimitExceeded:
            error = HandlerTimeLimitExceeded(
                f"the handler ran over its time limit of {call.time_limit_ms} ms "
                "(handler_time_limit_ms)").with_traceback(error.__traceback__)
        elif isinstance(error, Interrupt):  # Dramatiq's (its time limit, its shutdown)
            traced.failed(error)
            raise error
        traced.failed(error)
        self.metrics.failures.inc()
        self._failed(event.event_number, error, traced)
        raise _Stop(released=False) from None

    def _stop_unsure(self, event_number: int, when: str) -> None:
        """Stops the entity: its lock is lost, or could not be renewed in time (Redis slow
        or unreachable). In that case the lock may still be ours: it is released and a
        notice sent, so that the entity goes on without waiting for the sweep."""
        self._lost(event_number, when)
        if self.lease.is_lost(self.e):
            raise _Stop(released=True) from None
        e = self.e
        self.resend([Notice(e.subscriber_id, e.entity_type, e.entity_id, None)], 0)
        raise _Stop(released=False) from None

    def _lost(self, event_number: int, when: str) -> None:
        log.warning(
            "subscriber %s lost the lock on %s %r %s event %d, or could not renew it in time "
            "(paused or cut off from Redis past lock_ms=%d?); stopping, another worker goes "
            "on", self.e.subscriber_id,
            self.e.entity_type, self.e.entity_id, when, event_number, self.options.lock_ms,
            extra=self._fields(event_number),
        )

    def _fields(self, event_number: int, attempt: int | None = None) -> dict[str, Any]:
        """The event's fields of a log record (JSON log lines carry them)."""
        fields: dict[str, Any] = {
            "subscriber_id": self.e.subscriber_id, "entity_type": self.e.entity_type,
            "entity_id": self.e.entity_id, "event_number": event_number,
        }
        if attempt is not None:
            fields["attempt"] = attempt
        return fields

    def _failed(self, event_number: int, error: BaseException,
                traced: Handling | None = None) -> None:
        """Records a failed attempt (if the lock is still ours): the entity is retried
        when its backoff has passed, or parked at the last attempt."""
        e, options = self.e, self.options
        failure = Failure(event_number, f"{type(error).__name__}: {error}",
                          "".join(traceback.format_exception(error)),
                          options.backoff.delay_ms(self.attempts + 1))
        failed = self.state.fail(e, self.token, failure, options.max_attempts)
        if failed.lost:
            self._lost(event_number, "after a failure at")
            self.lease.lose(e)
            raise _Stop(released=True) from None
        attempts = self.attempts = failed.attempts
        if not failed.parked:
            log.warning(
                "subscriber %s failed on %s %r event %d (attempt %d of %d), retrying in %d ms",
                e.subscriber_id, e.entity_type, e.entity_id, event_number, attempts,
                options.max_attempts, failed.retry_in_ms, exc_info=error,
                extra=self._fields(event_number, attempts),
            )
            self.resend([Notice(e.subscriber_id, e.entity_type, e.entity_id, None)],
                        failed.retry_in_ms)
            return
        metrics.PARKED.labels(e.subscriber_id).inc()
        if traced is not None:
            traced.parked(attempts)
        log.error(
            "subscriber %s parked %s %r at event %d after %d attempts "
            "(es-workers parked retry|skip)", e.subscriber_id, e.entity_type, e.entity_id,
            event_number, attempts, exc_info=error, extra=self._fields(event_number, attempts),
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
