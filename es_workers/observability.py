"""Logging and Prometheus metrics for the publisher and worker processes.

One log format everywhere: time, level, process ID, logger name, message. Metrics (see
`es_workers.metrics`) are served over HTTP only when `metrics_port` is set: the publisher
on `metrics_port`, each Dramatiq worker process on the first free port after it (worker
processes are separate processes, each with its own counters).
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
METRICS_PORTS_PER_HOST = 64  # worker processes look this far past metrics_port for a port

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
