"""Logging and Prometheus metrics for the publisher and worker processes.

One log format everywhere (`log_format`): text lines with time, level, process ID, logger
name and message, or JSON objects with those and the event's fields. Metrics (see
`es_workers.metrics`) are served over HTTP only when `metrics_port` is set, one port per
container: the processes share a PROMETHEUS_MULTIPROC_DIR (`es-workers worker` makes one
for its worker processes) and whichever binds the port serves all of them.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.request import urlopen

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server
from prometheus_client.metrics_core import Metric

SCRAPE_ATTEMPTS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when imported
# Set by `es-workers worker` to the metrics folder it made: Dramatiq's main process
# (`run_dramatiq`) removes that folder when it exits. Not ES_: no setting.
MADE_DIR_ENV = "ESWORKERS_MADE_METRICS_DIR"
RETRY_BIND_S = 5.0
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


def metrics_registry() -> CollectorRegistry:
    """What a metrics port serves: with PROMETHEUS_MULTIPROC_DIR set, the metrics of every
    process writing to that directory (prometheus-client's multiprocess mode); else this
    process's own."""
    if not os.environ.get(MULTIPROC_DIR_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(SharedDirectoryCollector(os.environ[MULTIPROC_DIR_ENV]))
    return registry


class SharedDirectoryCollector:
    """The metrics of every process writing to `path`, as prometheus-client's
    MultiProcessCollector merges them, minus the files a starting process has created but
    not yet sized: reading one fails the whole scrape (struct.error), and every process
    creates some as it starts. A file a stopping process removes between listing and
    reading is another such race: the scrape lists the files again."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        for _ in range(SCRAPE_ATTEMPTS - 1):
            try:
                return self._merge()
            except (FileNotFoundError, struct.error):
                continue
        return self._merge()

    def _merge(self) -> Iterable[Metric]:
        files = [name for name in glob.glob(os.path.join(self.path, "*.db")) if _sized(name)]
        merged: Iterable[Metric] = multiprocess.MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True)
        return merged


def _sized(name: str) -> bool:
    try:
        return os.path.getsize(name) > 0
    except FileNotFoundError:
        return False


def serve_metrics(port: int) -> None:
    """Serves Prometheus metrics on `port` (raises OSError if it is taken)."""
    start_http_server(port, registry=metrics_registry())
    shared = "every process of " + os.environ[MULTIPROC_DIR_ENV] if os.environ.get(
        MULTIPROC_DIR_ENV) else "this process"
    log.info("serving the Prometheus metrics of %s on port %d", shared, port)


class SharedMetricsServer:
    """A container's metrics port: each process (publisher, worker processes) tries to
    serve it, the first to bind it serves the whole directory, the others try again every
    RETRY_BIND_S, so one takes over if the serving process dies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._thread = threading.Thread(target=self._run, name="es-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                serve_metrics(self.port)
                return
            except OSError as error:
                log.debug("metrics port %d: %s; trying again later", self.port, error)
                time.sleep(RETRY_BIND_S)


def forget_process_metrics() -> None:
    """Drops this process's live gauges from the shared directory (it is stopping)."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def metrics_port_error(port: int) -> str | None:
    """Why `port` cannot serve our metrics: another program listens on it. None when it is
    free, or when, with a shared PROMETHEUS_MULTIPROC_DIR, an es_workers process of the
    same deployment serves it already (its series start with `es_`)."""
    try:
        with socket.socket() as probe:
            # As prometheus-client's server does: a port in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("0.0.0.0", port))
    except OSError as error:
        if os.environ.get(MULTIPROC_DIR_ENV) and _serves_our_metrics(port):
            return None
        return (f"metrics port {port} (ES_METRICS_PORT) is taken by another program "
                f"({error.strerror or error}): stop it, or choose another port")
    return None


def _serves_our_metrics(port: int) -> bool:
    try:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read(1_000_000).decode(errors="replace")
    except (OSError, ValueError):
        return False
    return any(line.startswith(("# HELP es_", "es_")) for line in text.splitlines())


def remove_made_metrics_dir() -> None:
    """Removes the metrics folder `es-workers worker` made for its processes (MADE_DIR_ENV),
    as Dramatiq's main process exits: nothing is left in the temp folder."""
    made = os.environ.get(MADE_DIR_ENV)
    if made and made == os.environ.get(MULTIPROC_DIR_ENV):
        shutil.rmtree(made, ignore_errors=True)
