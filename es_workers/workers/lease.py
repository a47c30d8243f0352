"""Leases of the deliveries in progress: their locks renewed while handlers run, and
handlers stopped at their time limit or when their lease is lost.

A delivery holds a lock per (subscriber, entity) it handles, with a lease of `lock_ms`. In
each worker process one thread renews the locks of every delivery in progress, every third
of a lease (renew.lua: only those the delivery's token still holds), so a handler may take
any time without another worker taking its entity over. A lock found no longer held (the
process was paused, or cut off from Redis, past its lease) is lost: the scripts refuse the
delivery's token from then on, so it records nothing more for that entity, and it stops it.

Another thread, the watchdog, interrupts a handler with an exception raised in its thread
(as Dramatiq's TimeLimit middleware does): HandlerTimeLimitExceeded when it runs past the
handler time limit (a failed attempt), LeaseLost when its lock is lost or could not be
renewed in time (stopped, not counted). Python raises such an exception only when the
thread runs Python code: a handler blocked in one system call (a read without timeout, a
long time.sleep) is interrupted when the call returns, and its lease is renewed until then.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from dramatiq.middleware import Interrupt

from ..ports import SubscriberEntity, SubscriberState

log = logging.getLogger("es_workers.delivery")

RENEW_EVERY = 1 / 3
"""Of a lease: how often the locks are renewed."""
SURE_FOR = 0.8
"""Of a lease, from the start of the last renewal that succeeded: how long a lock is taken
to be still ours. Redis counts the lease from when the renewal ran, after it was sent; the
rest leaves an interrupted handler time to stop before the lock may go to another worker."""
RETRY_EVERY = 1 / 10
"""Of a lease: how soon a renewal that failed (Redis unreachable) is tried again."""


class HandlerTimeLimitExceeded(Interrupt):
    """Raised in a handler's thread when it runs past its time limit (`ES_HANDLER_TIME_LIMIT_MS`,
    `DeliveryOptions.handler_time_limit_ms`); the attempt counts as failed. A handler may catch
    it to clean up; it should raise it again."""


class LeaseLost(Interrupt):
    """Raised in a handler's thread when the lock on its entity is no longer its own (the
    process was paused or cut off from Redis past its lease): another worker may handle the
    entity now, and nothing this handler does for it is recorded."""


class Lease:
    """The locks one delivery holds under one token, on entities of one subscriber and
    entity type (one renewal round trip)."""

    def __init__(self, state: SubscriberState, token: str, lock_ms: int) -> None:
        self.state = state
        self.token = token
        self.lock_ms = lock_ms
        self._held: set[SubscriberEntity] = set()
        self._lost: set[SubscriberEntity] = set()
        self.sure_until = 0.0  # time.monotonic(): the locks are surely ours until then
        self.renew_at = math.inf

    def taken(self, entities: Sequence[SubscriberEntity], at: float) -> None:
        """The locks were taken (or renewed) by a call sent at `at` (time.monotonic())."""
        self._held.update(entities)
        self.sure_until = at + self.lock_ms * SURE_FOR / 1000
        self.renew_at = at + self.lock_ms * RENEW_EVERY / 1000

    def holds(self, e: SubscriberEntity) -> bool:
        """Whether the entity's lock is surely still this delivery's."""
        return e in self._held and time.monotonic() < self.sure_until

    def is_lost(self, e: SubscriberEntity) -> bool:
        return e in self._lost

    def let_go(self, e: SubscriberEntity) -> None:
        """The delivery released the lock (or lost it): no longer renewed."""
        self._held.discard(e)

    def lose(self, e: SubscriberEntity) -> None:
        self._held.discard(e)
        self._lost.add(e)

    def held(self) -> list[SubscriberEntity]:
        return list(self._held)  # one step under the GIL: the delivery's thread changes it


class HandlerCall:
    """A handler running under a lease: a context manager around the call. `interrupted` is
    the exception the watchdog raised in its thread, if it did. On a handler that returned
    before that exception reached it, the exit raises it (and no other reaches the thread
    later)."""

    def __init__(self, keeper: LeaseKeeper, lease: Lease, e: SubscriberEntity,
                 time_limit_ms: int) -> None:
        self.keeper = keeper
        self.lease = lease
        self.e = e
        self.time_limit_ms = time_limit_ms
        self.thread_id = threading.get_ident()
        self.deadline = time.monotonic() + time_limit_ms / 1000
        self.interrupted: type[Interrupt] | None = None

    def __enter__(self) -> HandlerCall:
        self.keeper._watch(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            self.keeper._unwatch(self)
        except BaseException:
            # The interrupt reached the thread here; a call gets one at most, so this
            # second try cannot be cut short.
            self.keeper._unwatch(self)
            raise
        if self.interrupted is not None and kind is None:
            raise self.interrupted


class LeaseKeeper:
    """Renews the leases of a process's deliveries and watches their handler calls, in two
    threads started with the first lease (see `keeper`)."""

    def __init__(self) -> None:
        # One lock, a condition per thread: a new handler call wakes the watchdog only.
        lock = threading.Lock()
        self._renewer_told = threading.Condition(lock)
        self._watchdog_told = threading.Condition(lock)
        self._leases: set[Lease] = set()
        self._calls: set[HandlerCall] = set()
        self._renewer_wakes_at = math.inf
        self._watchdog_wakes_at = math.inf
        self._started = False

    def hold(self, lease: Lease, entities: Sequence[SubscriberEntity], taken_at: float
             ) -> None:
        """Renews the entities' locks, taken at `taken_at` (time.monotonic()) under the
        lease's token, until `end` or `Lease.let_go`."""
        lease.taken(entities, taken_at)
        with self._renewer_told:
            if not self._started:
                self._started = True
                for target, name in ((self._run_renewer, "renewer"),
                                     (self._run_watchdog, "watchdog")):
                    threading.Thread(target=target, name=f"es-workers-lease-{name}",
                                     daemon=True).start()
            self._leases.add(lease)
            if lease.renew_at < self._renewer_wakes_at:
                self._renewer_told.notify()

    def end(self, lease: Lease) -> None:
        with self._renewer_told:
            self._leases.discard(lease)

    def call(self, lease: Lease, e: SubscriberEntity, time_limit_ms: int) -> HandlerCall:
        """The context manager to run the entity's handler in."""
        return HandlerCall(self, lease, e, time_limit_ms)

    # -- Renewing --------------------------------------------------------------------------

    def _run_renewer(self) -> None:
        """Renews each lease when due; runs until the process ends."""
        while True:
            with self._renewer_told:
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.renew_at <= now]
                if not due:
                    self._renewer_wakes_at = min(
                        (lease.renew_at for lease in self._leases), default=math.inf)
                    self._renewer_told.wait(_timeout(self._renewer_wakes_at, now))
                    continue
            for lease in due:
                self._renew(lease)

    def _renew(self, lease: Lease) -> None:
        held = lease.held()
        started = time.monotonic()
        if not held:
            lease.renew_at = started + lease.lock_ms * RENEW_EVERY / 1000
            return
        try:
            renewed = lease.state.renew(held, lease.token, lease.lock_ms)
        except Exception as error:  # Redis unreachable: try again soon; the watchdog stops
            # the handlers if the leases cannot be confirmed in time.
            log.warning("could not renew the locks of %d entities (%s: %s); trying again",
                        len(held), type(error).__name__, error)
            lease.renew_at = started + lease.lock_ms * RETRY_EVERY / 1000
            return
        lost = [e for e, ours in zip(held, renewed, strict=True) if not ours]
        for e in lost:
            lease.lose(e)
        lease.taken([], started)
        if lost:
            with self._watchdog_told:
                self._watchdog_told.notify()

    # -- Watching handler calls ------------------------------------------------------------

    def _watch(self, call: HandlerCall) -> None:
        with self._watchdog_told:
            self._calls.add(call)
            if min(call.deadline, call.lease.sure_until) < self._watchdog_wakes_at:
                self._watchdog_told.notify()

    def _unwatch(self, call: HandlerCall) -> None:
        with self._watchdog_told:
            self._calls.discard(call)
            if call.interrupted is not None:
                # Raised but not yet reached: the handler returned first. Cleared under
                # the lock the watchdog raises under, so it cannot reach later code.
                _set_thread_exception(call.thread_id, None)

    def _run_watchdog(self) -> None:
        """Interrupts the handler calls past their time limit or their lease; runs until the
        process ends."""
        with self._watchdog_told:
            while True:
                now = time.monotonic()
                wakes_at = math.inf
                for call in self._calls:
                    if call.interrupted is not None:
                        continue
                    if call.lease.is_lost(call.e) or now >= call.lease.sure_until:
                        self._interrupt(call, LeaseLost)
                    elif now >= call.deadline:
                        self._interrupt(call, HandlerTimeLimitExceeded)
                    else:
                        wakes_at = min(wakes_at, call.deadline, call.lease.sure_until)
                self._watchdog_wakes_at = wakes_at
                self._watchdog_told.wait(_timeout(wakes_at, now))

    def _interrupt(self, call: HandlerCall, exception: type[Interrupt]) -> None:
        call.interrupted = exception
        _set_thread_exception(call.thread_id, exception)


_keeper: LeaseKeeper | None = None
_keeper_lock = threading.Lock()


def keeper() -> LeaseKeeper:
    """This process's LeaseKeeper, whatever the number of buses and stores in it."""
    global _keeper
    with _keeper_lock:
        if _keeper is None:
            _keeper = LeaseKeeper()
        return _keeper


def _forget_keeper() -> None:
    """In a forked child (Dramatiq's worker processes): the parent's threads are not there,
    nor its leases; the child starts its own keeper when it first delivers."""
    global _keeper, _keeper_lock
    _keeper, _keeper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_keeper)


def _timeout(wakes_at: float, now: float) -> float | None:
    return None if wakes_at == math.inf else max(0.0, wakes_at - now)


def _set_thread_exception(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raises `exception` in the thread when it next runs Python code, or with None clears
    the one set and not yet raised: CPython's PyThreadState_SetAsyncExc (C API), as Dramatiq's
    TimeLimit middleware uses it."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if exception is None else ctypes.py_object(exception))
