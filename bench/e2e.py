"""End-to-end figures on a real Redis, with a real publisher process and worker process.

    python bench/e2e.py [--redis-url URL] [--seconds 10] [--rate 200] [--events 20000]
                        [--entities 1000] [--processes 1] [--threads 8] [--worker-timeout 5]

P4  append-to-handler latency at a steady --rate of single-event appends: the handler
    writes `time.time() - event.event_time` (event_time is taken just before the append
    script runs). Goal p50 <= 5 ms, p99 <= 15 ms.
P5  handling rate under a backlog: the publisher is stopped, --events single-event appends
    are written over --entities entities, the publisher is started again and the bench
    times the subscriber's checkpoints from the first event handled to the last. Divided by
    the rate of a no-op Dramatiq actor on the same broker and worker (messages enqueued as
    fast as possible, timed until the queue is empty). Goal >= 1.0, with many events per
    entity (--events over --entities) and with one (--single events over as many entities:
    issue 14).

The bench uses its own key prefix and Dramatiq namespace and deletes both at the end. It
starts `es-workers publish` / `es-workers worker` when the CLI is installed, else
`python -c "...store.start()"` and `python -m dramatiq`.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType

import redis

ROOT = Path(__file__).resolve().parent.parent
APP = "bench.e2e_app:store"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Processes:
    def __init__(self, env: dict[str, str], logs: Path, args: argparse.Namespace) -> None:
        self.env = env
        self.logs = logs
        self.args = args
        self.cli = shutil.which("es-workers", path=str(Path(sys.executable).parent)) is not None \
            and importlib.util.find_spec("es_workers.cli") is not None
        self.running: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}-{len(self.running)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.running.append(process)
        return process

    def publisher(self) -> subprocess.Popen[bytes]:
        if self.cli:
            argv = [str(Path(sys.executable).parent / "es-workers"), "publish", APP]
        else:
            argv = [sys.executable, "-c", "from bench.e2e_app import store; store.start()"]
        return self._start("publisher", argv, self.env)

    def worker(self) -> subprocess.Popen[bytes]:
        a = self.args
        env = dict(self.env, dramatiq_worker_timeout=str(a.worker_timeout))
        if self.cli:
            argv = [str(Path(sys.executable).parent / "es-workers"), "worker", APP,
                    "--processes", str(a.processes), "--threads", str(a.threads),
                    "--worker-timeout", str(a.worker_timeout)]
        else:
            argv = [sys.executable, "-m", "dramatiq", "bench.e2e_app",
                    "--processes", str(a.processes), "--threads", str(a.threads)]
        return self._start("worker", argv, env)

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)

    def stop_all(self) -> None:
        for process in self.running:
            self.stop(process)


def wait(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def latencies(folder: str) -> list[float]:
    values: list[float] = []
    for path in glob.glob(os.path.join(folder, "latency-*.txt")):
        with open(path) as lines:
            values += [float(line) for line in lines if line.strip()]
    return values


def handled(app: ModuleType, subscriber_id: str, entity_type: str) -> int:
    """Events the subscriber has handled: the sum of its checkpoints (events are 1..head)."""
    return sum(app.store.storage.state.checkpoints(subscriber_id, entity_type).values())


def write_one(app: ModuleType, entity_type: str, entity_id: str, head: int, content: object) -> int:
    with app.store.open_from(entity_type, entity_id, head) as stream:
        for _ in stream.all():
            pass
        stream.write(content)
        return int(stream.position)


def measure_latency(app: ModuleType, folder: str, seconds: float, rate: float) -> list[float]:
    """P4: single-event appends at a steady rate over 200 entities; the handler's lines."""
    heads: dict[str, int] = {}
    rng = random.Random(1)
    total = int(seconds * rate)
    start = time.perf_counter()
    for n in range(total):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        entity_id = f"t-{rng.randrange(200)}"
        heads[entity_id] = write_one(app, "tick", entity_id, heads.get(entity_id, 0),
                                     app.Tick(n=n))
    wait(lambda: len(latencies(folder)) >= total + 1, "every tick to be handled")
    values = latencies(folder)[1:]  # the first is the warm-up tick
    return values[int(rate):] or values  # and the first second (connections, imports)


def measure_noop(app: ModuleType, messages: int) -> float:
    """Messages per second of the no-op actor: enqueue fast, time until the queue is empty."""
    started = time.perf_counter()
    for _ in range(messages):
        app.noop.send()
    app.broker.join(app.NOOP_QUEUE, interval=5, timeout=300_000)
    return messages / (time.perf_counter() - started)


def write_backlog(app: ModuleType, entity_type: str, events: int, entities: int) -> float:
    """Single-event appends from 4 threads, entities round robin; returns appends/s."""

    def writer(part: int, parts: int) -> None:
        heads: dict[str, int] = {}
        for n in range(part, events, parts):
            entity_id = f"b-{n % entities}"
            heads[entity_id] = write_one(app, entity_type, entity_id, heads.get(entity_id, 0),
                                         app.Added(amount=n))

    started = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(part, 4)) for part in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return events / (time.perf_counter() - started)


def measure_backlog(
    app: ModuleType, processes: Processes, entity_type: str, events: int, entities: int
) -> tuple[subprocess.Popen[bytes], float, float, float]:
    """P5: with the publisher stopped, writes the backlog, then starts a publisher and times
    the subscriber (named as the entity type) from its first event handled to the last.
    Returns (the publisher, appends/s, events handled/s, seconds)."""
    write_rate = write_backlog(app, entity_type, events, entities)
    publisher = processes.publisher()
    done = 0
    while done == 0:
        time.sleep(0.002)
        done = handled(app, entity_type, entity_type)
    first = time.perf_counter()
    at_first = done
    while done < events:
        time.sleep(0.005)
        done = handled(app, entity_type, entity_type)
    elapsed = time.perf_counter() - first
    return publisher, write_rate, (events - at_first) / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=10.0, help="P4 duration")
    parser.add_argument("--rate", type=float, default=200.0, help="P4 appends per second")
    parser.add_argument("--events", type=int, default=20_000, help="P5 backlog")
    parser.add_argument("--entities", type=int, default=1000, help="P5 entities")
    parser.add_argument("--single", type=int, default=5000,
                        help="P5 worst case: events over as many entities (0: skip)")
    parser.add_argument("--noop-messages", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--worker-timeout", type=int, default=20,
                        help="ms (es-workers' default; with --broker polling, the poll interval)")
    parser.add_argument("--broker", choices=["waking", "polling"], default="waking",
                        help="waking: WakingRedisBroker (es-workers' default); polling: "
                             "Dramatiq's RedisBroker")
    args = parser.parse_args()

    prefix = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    folder = tempfile.mkdtemp(prefix="es-bench-")
    env = dict(os.environ, BENCH_REDIS_URL=args.redis_url, BENCH_PREFIX=prefix,
               BENCH_DIR=folder, ES_REDIS_URL=args.redis_url, BENCH_BROKER=args.broker,
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
    os.environ.update(
        {k: env[k] for k in ("BENCH_REDIS_URL", "BENCH_PREFIX", "BENCH_DIR", "BENCH_BROKER")}
    )
    sys.path.insert(0, str(ROOT))
    import bench.e2e_app as app

    client = redis.Redis.from_url(args.redis_url)
    processes = Processes(env, Path(folder), args)
    try:
        publisher = processes.publisher()
        processes.worker()
        write_one(app, "tick", "warm-up", 0, app.Tick(n=-1))
        wait(lambda: len(latencies(folder)) >= 1, "the worker to start", timeout=120)
        # Let the publisher finish handing new subscribers their (empty) history.
        state = app.store.storage.state
        wait(lambda: state.is_caught_up("bulk", "bulk"), "catch-up")

        p4 = measure_latency(app, folder, args.seconds, args.rate)
        noop_rate = measure_noop(app, args.noop_messages)

        processes.stop(publisher)
        publisher, write_rate, p5_rate, p5_seconds = measure_backlog(
            app, processes, "bulk", args.events, args.entities
        )
        single_rate = 0.0
        if args.single:
            processes.stop(publisher)
            *_, single_rate, _ = measure_backlog(
                app, processes, "single", args.single, args.single
            )
    finally:
        processes.stop_all()
        for pattern in (f"{prefix}:*", f"{prefix}-dq:*"):
            keys = list(client.scan_iter(pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        logs = folder
    p50, p99 = percentile(p4, 0.50) * 1000, percentile(p4, 0.99) * 1000
    ratio = p5_rate / noop_rate
    rows: list[tuple[str, str, str, bool | None]] = [
        ("P4 latency p50", f"{p50:.1f} ms", "<= 5 ms", p50 <= 5),
        ("P4 latency p99", f"{p99:.1f} ms", "<= 15 ms", p99 <= 15),
        ("P5 events/s / no-op msgs/s", f"{p5_rate:,.0f} / {noop_rate:,.0f} = {ratio:.2f}",
         ">= 1.0", ratio >= 1.0),
    ]
    if args.single:
        single_ratio = single_rate / noop_rate
        rows.append(("P5 one event per entity", f"{single_rate:,.0f} / {noop_rate:,.0f} = "
                     f"{single_ratio:.2f}", ">= 1.0", single_ratio >= 1.0))
    print(f"\nes_workers end to end on {args.redis_url} "
          f"({'es-workers CLI' if processes.cli else 'python -c / python -m dramatiq'})")
    print(f"broker: {args.broker}; "
          f"worker: {args.processes} process x {args.threads} threads, dramatiq_worker_timeout="
          f"{args.worker_timeout} ms; publisher: 1 process; {os.cpu_count()} CPUs")
    print(f"P4: {len(p4)} single-event appends at {args.rate:.0f}/s over 200 entities "
          f"(first second dropped); p90 {percentile(p4, 0.9) * 1000:.1f} ms, "
          f"max {max(p4) * 1000:.1f} ms, mean {statistics.fmean(p4) * 1000:.1f} ms")
    print(f"P5: {args.events} single-event appends over {args.entities} entities written at "
          f"{write_rate:,.0f}/s with the publisher stopped, handled in {p5_seconds:.2f} s; "
          f"no-op actor: {args.noop_messages} messages")
    if args.single:
        print(f"P5 one event per entity: {args.single} events over {args.single} entities "
              "(no notice coalesces two events of an entity; the publisher names up to 32 "
              "entities of a partition per message)")
    print(f"\n{'figure':<28} {'measured':<28} {'goal':<10} result")
    for name, value, goal, ok in rows:
        result = "" if ok is None else "PASS" if ok else "MISS"
        print(f"{name:<28} {value:<28} {goal:<10} {result}")
    shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
