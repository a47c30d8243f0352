"""Dramatiq middleware of the worker processes: their setup, heartbeat, and a clean stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import dramatiq
from dramatiq.middleware import MiddlewareError

from ..errors import ConfigurationError
from ..observability import (
    MULTIPROC_DIR_ENV,
    SharedMetricsServer,
    configure_logging,
    forget_process_metrics,
)
from ..ports import BEAT_EVERY_S, Heartbeats
from .dramatiq_internals import stop_already_requested

SAME_STOP_S = 2.0  # a SIGTERM this soon after the first is the same stop request

log = logging.getLogger("es_workers")
heartbeat_log = logging.getLogger("es_workers.heartbeats")  # the logger it had in redis/


class WorkerProcessSetup(dramatiq.Middleware):
    """Applies `log_level` and `log_format`, and serves metrics, in each Dramatiq worker
    process.

    Runs after the worker process has imported the app (`after_process_boot`), so it works
    under `es-workers worker` and plain `dramatiq APP_MODULE` alike. It replaces the
    handler Dramatiq installed (its own format) with one in ours, on the same stream (the
    pipe to Dramatiq's main process).
    """

    def __init__(self, log_level: str, metrics_port: int | None, log_format: str = "text"
                 ) -> None:
        self.log_level = log_level
        self.log_format = log_format
        self.metrics_port = metrics_port

    def after_process_boot(self, broker: Any) -> None:
        configure_logging(self.log_level, self.log_format, replace=True)
        if self.metrics_port is not None:
            if not os.environ.get(MULTIPROC_DIR_ENV):
                log.warning("%s is not set: metrics port %d serves one worker process only "
                            "(`es-workers worker` sets it)", MULTIPROC_DIR_ENV,
                            self.metrics_port)
            SharedMetricsServer(self.metrics_port).start()

    def before_process_stop(self, broker: Any) -> None:
        forget_process_metrics()


class BeatingThread:
    """Beats as `role` every BEAT_EVERY_S in a daemon thread (the worker processes)."""

    def __init__(self, heartbeats: Heartbeats, role: str, every_s: float = BEAT_EVERY_S) -> None:
        self.heartbeats = heartbeats
        self.role = role
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"es-{role}-heartbeat",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.heartbeats.beat(self.role)
            except Exception as error:  # Redis down: health will say so; keep trying
                heartbeat_log.debug("heartbeat of %s failed: %s", self.role, error)
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s)
        try:
            self.heartbeats.stop(self.role)
        except Exception as error:
            heartbeat_log.debug("removing the heartbeat of %s failed: %s", self.role, error)


class WorkerHeartbeat(dramatiq.Middleware):
    """Beats as "worker" while a Dramatiq worker runs in this process (read by
    `es-workers health`). `heartbeats` is set when the bus is bound to its storage."""

    def __init__(self) -> None:
        self.heartbeats: Heartbeats | None = None
        self._thread: BeatingThread | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        if self.heartbeats is not None and self._thread is None:
            self._thread = BeatingThread(self.heartbeats, "worker")
            self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None


class SubscriberClaim(dramatiq.Middleware):
    """Before a worker boots, claims the app's subscriber IDs under its prefix (`claim`, set
    when the bus is bound: `DramatiqEventBus.claim_subscribers`). If another app runs one of
    them there, the worker does not start, under plain `dramatiq APP_MODULE` too
    (`es-workers worker` checks before it starts Dramatiq)."""

    def __init__(self) -> None:
        self.claim: Callable[[], None] | None = None

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        if self.claim is None:
            return
        try:
            self.claim()
        except ConfigurationError as error:
            log.critical("%s", error)
            # Dramatiq logs other errors of a middleware and goes on; it lets these through.
            raise MiddlewareError(str(error)) from error
        except Exception as error:  # Redis down: the worker rides it out as it would later
            log.warning("could not record the subscribers: %s: %s", type(error).__name__,
                        error)


class SingleStop(dramatiq.Middleware):
    """Makes a worker process take two SIGTERMs in quick succession as one stop.

    A SIGTERM to the whole process group (honcho, `kill -TERM -PGID`) reaches each worker
    process twice: directly, and forwarded by Dramatiq's main process. Dramatiq takes the
    second as "kill now" and exits 1 without finishing in-flight work. A repeat after
    SAME_STOP_S still kills at once. DramatiqEventBus adds it to its broker.
    """

    def after_process_boot(self, broker: Any) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler):
            return
        # A SIGTERM may have reached this process while it imported the app, before this
        # hook: Dramatiq's handler then already has `running` False, and the copy its main
        # process forwards must be absorbed too.
        first: float | None = time.monotonic() if stop_already_requested(handler) else None

        def once(signum: int, frame: FrameType | None) -> None:
            nonlocal first
            now = time.monotonic()
            if first is not None and now - first < SAME_STOP_S:
                return
            first = first if first is not None else now
            handler(signum, frame)

        signal.signal(signal.SIGTERM, once)
