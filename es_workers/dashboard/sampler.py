"""The dashboard's one reader of the store's figures, and the history behind its chart.

Every `every` seconds at most (whatever the number of open pages) it takes one `Overview`
(the reads of `es-workers status` plus entity and event counts) and keeps, per subscriber,
the events handled so far (events - events behind). Handled events per second are the
differences between consecutive samples. Pages show the latest sample, so the cost to Redis
is one overview per `every` seconds, not one per viewer.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import redis

from es_workers import EsError
from es_workers.store import Store

from .data import Overview, overview

SubscriberKey = tuple[str, str]  # (entity type, subscriber ID)


@dataclass(frozen=True)
class Sample:
    taken_at: float  # seconds since the epoch
    handled: dict[SubscriberKey, int]


@dataclass(frozen=True)
class Rate:
    at: float  # seconds since the epoch, the end of the interval
    per_second: float


class Sampler:
    def __init__(
        self,
        store: Store,
        *,
        every: float = 3.0,
        window: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every <= 0 or window <= 0:
            raise ValueError("every and window are positive numbers of seconds")
        self.store = store
        self.every = every
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[Sample] = deque(maxlen=int(window / every) + 2)
        self._latest: Overview | None = None
        self._error: Exception | None = None
        self._read_at = float("-inf")

    def latest(self) -> Overview:
        """The latest overview, read again if older than `every` seconds. Raises the read's
        error (Redis down) rather than show stale figures as if they were current."""
        with self._lock:
            if self._clock() - self._read_at >= self.every:
                self._read()
            if self._error is not None:
                raise self._error
            assert self._latest is not None
            return self._latest

    def refresh(self) -> Overview:
        """Reads now: after an action the page shows its effect at once."""
        with self._lock:
            self._read_at = float("-inf")
        return self.latest()

    def _read(self) -> None:
        self._read_at = self._clock()
        try:
            self._latest = overview(self.store)
        except (redis.RedisError, EsError) as error:
            self._error = error
            return
        self._error = None
        self._samples.append(Sample(self._latest.taken_at, self._latest.handled()))

    def rates(self) -> dict[SubscriberKey, list[Rate]]:
        """Handled events per second per subscriber over the window, oldest first."""
        with self._lock:
            samples = list(self._samples)
        rates: dict[SubscriberKey, list[Rate]] = {}
        for before, after in itertools.pairwise(samples):
            elapsed = after.taken_at - before.taken_at
            if elapsed <= 0:
                continue
            for key, handled in after.handled.items():
                # A replay moves handled back: show no negative rate.
                done = max(0, handled - before.handled.get(key, handled))
                rates.setdefault(key, []).append(Rate(after.taken_at, done / elapsed))
        return rates

    def run(self, stop: threading.Event) -> None:
        """Samples every `every` seconds until `stop` is set (blocks: run it in a thread),
        so the chart has history even while nobody watches."""
        while not stop.is_set():
            # An error is shown by the pages; sampling resumes when Redis answers.
            with contextlib.suppress(redis.RedisError, EsError):
                self.latest()
            stop.wait(self.every)
