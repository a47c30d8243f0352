"""The app run by bench/cluster.py's publisher and worker processes, wired from settings as
users deploy it (ES_REDIS_URL, ES_BROKER_URL, ES_PREFIX, ...).

The subscriber `latency` writes `now - event_time` (seconds) of each `tick` event to
BENCH_DIR/latency-<pid>.txt, one line per event (P4). Processes that have BENCH_DIR build the
store on import; bench/cluster.py itself calls `build`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TextIO

from es_workers import Content, Event, Store
from es_workers.settings import Settings


class Tick(Content):
    n: int


def build(settings: Settings | None = None) -> Store:
    made = Store.from_settings(events={"tick": [Tick]}, settings=settings)
    out: list[TextIO] = []
    lock = threading.Lock()  # worker threads share the file

    @made.subscribe("tick", "latency")
    def latency(event: Event) -> None:
        seen = time.time() - event.event_time.timestamp()
        with lock:
            if not out:
                path = os.path.join(os.environ["BENCH_DIR"], f"latency-{os.getpid()}.txt")
                out.append(open(path, "a", buffering=1))  # noqa: SIM115
            out[0].write(f"{seen}\n")

    return made


store = build() if os.environ.get("BENCH_DIR") else None
