"""One holder under a slow handler and a failing entity, with real processes on a real Redis
(issue 18's report, re-run):

    python bench/lease.py [--redis-url URL] [--seconds 35] [--lock-ms 2000] [--handler-s 8]
                          [--workers 2]

Starts `es-workers publish` and --workers `es-workers worker` processes (1 process, 8
threads each) on ES_LOCK_MS=--lock-ms. Entity "slow" gets an event every second, each
taking --handler-s seconds in subscriber `slow`; entity "failing" gets an event every 50 ms
and subscriber `failing` raises on every attempt (ES_MAX_ATTEMPTS 5, backoff 200 ms to
10 s). After --seconds it prints, for `slow`: how often event 1 was started, the most
handler calls running at once, the events handled to the end and checkpointed, and the
"lost the lock" lines; for `failing`: the attempts at event 1 with the time from the first,
and whether the entity was parked. Own key prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
APP = "bench.lease_app:store"
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def append(store: Any, entity_id: str, content: Any) -> None:
    with store.open("counter", entity_id) as stream:
        for _ in stream.all():
            pass
        stream.write(content)


def most_at_once(calls: list[tuple[str, int, int, float]]) -> int:
    running = most = 0
    for what, _, _, _ in sorted(calls, key=lambda call: call[3]):
        running += 1 if what == "start" else -1
        most = max(most, running)
    return most


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=35)
    parser.add_argument("--lock-ms", type=int, default=2000)
    parser.add_argument("--handler-s", type=float, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    prefix = f"bench-lease-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, ES_REDIS_URL=args.redis_url, ES_PREFIX=prefix, PYTHONPATH=os.pathsep
               .join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
               ES_LOCK_MS=str(args.lock_ms), BENCH_HANDLER_S=str(args.handler_s),
               ES_WORKER_THREADS="8", ES_LOG_LEVEL="INFO")
    client = redis.Redis.from_url(args.redis_url)
    logs = Path(tempfile.mkdtemp(prefix="bench-lease-"))
    sys.path.insert(0, str(ROOT))
    os.environ.update(ES_REDIS_URL=args.redis_url, ES_PREFIX=prefix)
    from bench.lease_app import Added, store  # the writer: same settings as the processes

    processes = [start([ES_WORKERS, "publish", APP], env, logs / "publisher.log")]
    processes += [start([ES_WORKERS, "worker", APP, "--processes", "1"], env,
                        logs / f"worker-{n}.log") for n in range(args.workers)]
    try:
        time.sleep(3)  # the processes boot
        began = time.monotonic()
        next_slow = began
        while time.monotonic() - began < args.seconds:
            if time.monotonic() >= next_slow:
                append(store, "slow", Added(amount=1))
                next_slow += 1.0
            append(store, "failing", Added(amount=1))
            time.sleep(0.05)
        report(client, prefix, store, logs, args)
    finally:
        for process in processes:
            stop(process)
        store.close()
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        for first in range(0, len(keys), 500):
            client.delete(*keys[first:first + 500])


def report(client: redis.Redis, prefix: str, store: object, logs: Path,
           args: argparse.Namespace) -> None:
    from es_workers import admin

    calls = []
    for item in client.lrange(f"{prefix}:bench:calls", 0, -1):
        what, number, pid, at = item.decode().split(":")
        calls.append((what, int(number), int(pid), float(at)))
    attempts = [float(item.decode().split(":")[1]) for item in
                client.lrange(f"{prefix}:bench:attempts", 0, -1)
                if item.decode().startswith("1:")]
    checkpoints = store.storage.state.checkpoints  # type: ignore[attr-defined]
    lost = sum(path.read_text(errors="replace").count("lost the lock")
               for path in logs.glob("worker-*.log"))
    parked = {p.entity_id: (p.event_number, p.attempts, p.error)
              for p in admin.parked(store, "failing", "counter")}  # type: ignore[arg-type]
    print(f"lock_ms={args.lock_ms} handler={args.handler_s} s workers={args.workers} "
          f"over {args.seconds:.0f} s")
    print(f"slow: event 1 started {sum(1 for c in calls if c[:2] == ('start', 1))} times; "
          f"most calls at once {most_at_once(calls)}; calls ended "
          f"{sum(1 for c in calls if c[0] == 'end')}; checkpoint "
          f"{checkpoints('slow', 'counter').get('slow', 0)}; 'lost the lock' lines {lost}")
    offsets = [round((at - attempts[0]) * 1000) for at in attempts]
    print(f"failing: {len(attempts)} attempts at event 1, at ms {offsets}; parked: {parked}")


if __name__ == "__main__":
    main()
