"""Logging and Prometheus metrics for the publisher and worker processes.

One log format everywhere: time, level, process ID, logger name, message. Metrics (see
`es_workers.metrics`) are served over HTTP only when `metrics_port` is set: the publisher
on `metrics_port`, each Dramatiq worker process on the first free port after it (worker
processes are separate processes, each with its own counters).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

import dramatiq

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
METRICS_PORTS_PER_HOST = 64  # worker processes look this far past metrics_port for a port
SAME_STOP_S = 2.0  # a SIGTERM this soon after the first is the same stop request

log = logging.getLogger("es_workers")


def configure_logging(level: str) -> None:
    """Logs to stderr in the common format at `level` (a name such as "INFO").

    Leaves handlers already installed (by the app, or a test runner) in place.
    """
    logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger().setLevel(level)


def serve_metrics(port: int, *, search: int = 0) -> int:
    """Serves Prometheus metrics on `port`, or on the first free one of the `search` after
    it. Returns the port."""
    from prometheus_client import start_http_server

    last_error: OSError | None = None
    for candidate in range(port, port + search + 1):
        try:
            start_http_server(candidate)
        except OSError as error:
            last_error = error
            continue
        log.info("serving Prometheus metrics on port %d", candidate)
        return candidate
    raise OSError(f"no free port for metrics in {port}..{port + search}: {last_error}")


class WorkerProcessSetup(dramatiq.Middleware):
    """Applies `log_level` and serves metrics in each Dramatiq worker process.

    Runs after the worker process has imported the app (`after_process_boot`), so it works
    under `es-workers worker` and plain `dramatiq APP_MODULE` alike. Dramatiq configures
    the handlers and format of worker logs itself; this sets the level.
    """

    def __init__(self, log_level: str, metrics_port: int | None) -> None:
        self.log_level = log_level
        self.metrics_port = metrics_port

    def after_process_boot(self, broker: Any) -> None:
        logging.getLogger().setLevel(self.log_level)
        if self.metrics_port is not None:
            try:
                serve_metrics(self.metrics_port + 1, search=METRICS_PORTS_PER_HOST - 1)
            except OSError as error:
                log.error("metrics are off in this worker process: %s", error)


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
        first: float | None = None if _closure_value(handler, "running") is not False else (
            time.monotonic()
        )

        def once(signum: int, frame: FrameType | None) -> None:
            nonlocal first
            now = time.monotonic()
            if first is not None and now - first < SAME_STOP_S:
                return
            first = first if first is not None else now
            handler(signum, frame)

        signal.signal(signal.SIGTERM, once)


def _closure_value(function: Any, name: str) -> object:
    """The value of a variable `function` closes over, or None."""
    code = getattr(function, "__code__", None)
    cells = getattr(function, "__closure__", None) or ()
    if code is None or name not in code.co_freevars:
        return None
    try:
        return cells[code.co_freevars.index(name)].cell_contents
    except (IndexError, ValueError):
        return None
