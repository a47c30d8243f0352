"""Logging and Prometheus metrics for the publisher and worker processes.

One log format everywhere (`log_format`): text lines with time, level, process ID, logger
name and message, or JSON objects with those and the event's fields. Metrics (see
`es_workers.metrics`) are served over HTTP only when `metrics_port` is set: the publisher
on `metrics_port`, each Dramatiq worker process on the first free port after it (worker
processes are separate processes, each with its own counters).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
METRICS_PORTS_PER_HOST = 64  # worker processes look this far past metrics_port for a port
# Passed as `extra=` by the delivery and publisher log calls; JSON lines carry them.
EVENT_FIELDS = ("subscriber_id", "entity_type", "entity_id", "event_number", "attempt")

log = logging.getLogger("es_workers")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, the event fields the
    record has, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of `log_format`: "text" or "json"."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT)


def configure_logging(level: str, log_format: str = "text", *, replace: bool = False) -> None:
    """Logs to stderr at `level` (a name such as "INFO") in `log_format` ("text", "json").

    Leaves handlers already installed (by the app, or a test runner) in place, unless
    `replace`: a Dramatiq worker process replaces Dramatiq's own format with ours.
    """
    root = logging.getLogger()
    if replace:
        for handler in list(root.handlers):
            root.removeHandler(handler)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
    root.setLevel(level)


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
