"""End-to-end figures on a real Redis, with a real publisher process and worker process.

    python bench/e2e.py [--redis-url URL | --own-redis] [--seconds 10] [--rates 200,1000,3000]
                        [--p4-entities 1000] [--writers 16] [--events 20000] [--entities 1000]
                        [--processes 1] [--threads 8] [--worker-timeout 5] [--p4-only]

P4  append-to-handler latency at each steady rate of --rates single-event appends over
    --p4-entities entities, written by --writers asyncio tasks of this process: the handler
    notes `time.time()` against `event.event_time` (taken just before the append script
    runs). Goal (issue 25) p99 <= 5 ms at 1,000/s, <= 15 ms at 3,000/s, p50 <= 2 ms at
    200/s. With the per-stage breakdown of each event's delivery, stamped from outside the
    package (see bench/e2e_app.py's STAMPS): per stage p50 / p90 / p99 / max and a
    histogram, and the timeline of the median event. The load average is printed with
    each rate: on a loaded machine read the breakdown, not the goals. So is the CPU time
    each process (writer, publisher, worker, the bench's own redis-server) spent per event
    written, from /proc: on 2 cores the sum is what queues every stage.
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
import asyncio
import glob
import importlib.util
import os
import random
import shutil
import signal
import socket
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
import redis.asyncio

from es_workers import AsyncRedisStorage, AsyncStore

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
        self.cli = (
            shutil.which("es-workers", path=str(Path(sys.executable).parent)) is not None
            and importlib.util.find_spec("es_workers.cli") is not None
        )
        self.running: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}-{len(self.running)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running.append(process)
        return process

    def publisher(self) -> subprocess.Popen[bytes]:
        if self.cli:
            argv = [str(Path(sys.executable).parent / "es-workers"), "publish", APP]
            if self.args.profile_publisher:  # where the publisher's time goes (cProfile)
                profile = f"{self.args.profile_publisher}.{len(self.running)}"
                argv = [sys.executable, "-m", "cProfile", "-o", profile, *argv]
        else:
            argv = [sys.executable, "-c", "from bench.e2e_app import store; store.start()"]
        return self._start("publisher", argv, self.env)

    def worker(self) -> subprocess.Popen[bytes]:
        a = self.args
        env = dict(self.env, dramatiq_worker_timeout=str(a.worker_timeout))
        if self.cli:
            argv = [
                str(Path(sys.executable).parent / "es-workers"),
                "worker",
                APP,
                "--processes",
                str(a.processes),
                "--threads",
                str(a.threads),
                "--worker-timeout",
                str(a.worker_timeout),
            ]
        else:
            argv = [
                sys.executable,
                "-m",
                "dramatiq",
                "bench.e2e_app",
                "--processes",
                str(a.processes),
                "--threads",
                str(a.threads),
            ]
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


def timelines(folder: str) -> dict[int, list[float]]:
    """Tick number -> [event_time, *STAMPS] as the worker wrote them (bench/e2e_app.py)."""
    found: dict[int, list[float]] = {}
    for path in glob.glob(os.path.join(folder, "latency-*.txt")):
        with open(path) as lines:
            for line in lines:
                fields = line.split()
                if len(fields) == 9:  # a line being written is not yet whole
                    found[int(fields[0])] = [float(f) for f in fields[1:]]
    return found


# Stages of one event's way, as (name, from stamp, to stamp, what it is); stamps index
# [event_time, read, sent, fetched, started, handler, handled, done] (bench/e2e_app.py).
STAGES = [
    ("append+wake-up", 0, 1, "event_time -> the publisher's XREADGROUP returned it"),
    ("relay", 1, 2, "-> the publisher begins enqueueing its notice (per-batch work)"),
    ("queue", 2, 3, "-> the worker's consumer hands the message on (enqueue, wake, fetch)"),
    ("dispatch", 3, 4, "-> a worker thread starts it (work queue, middleware)"),
    ("lock+read", 4, 5, "-> the handler is called (begin script: lock, read, decode)"),
    ("handler", 5, 6, "-> the handler returns (here: taking its stamps)"),
    ("checkpoint", 6, 7, "-> checkpoint recorded, lock released (commit script)"),
]
BUCKETS_MS = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]


def histogram(values_ms: list[float]) -> str:
    counts = [0] * (len(BUCKETS_MS) + 1)
    for value in values_ms:
        counts[next((i for i, b in enumerate(BUCKETS_MS) if value <= b), len(BUCKETS_MS))] += 1
    return " ".join(f"{c:>5}" for c in counts)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(groups: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each named process group (its processes' and their
    reaped children's, from /proc/<pid>/stat), and of this process ("writer")."""
    spent = dict.fromkeys(groups, 0.0)
    names = {pgid: name for name, pgid in groups.items()}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        name = names.get(int(fields[2]))  # pgrp (fields[0] is the state)
        if name is not None:
            spent[name] += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    own = os.times()
    spent["writer"] = own.user + own.system
    return spent


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def handled(app: ModuleType, subscriber_id: str, entity_type: str) -> int:
    """Events the subscriber has handled: the sum of its checkpoints (events are 1..head)."""
    return sum(app.store.storage.state.checkpoints(subscriber_id, entity_type).values())


def write_one(app: ModuleType, entity_type: str, entity_id: str, head: int, content: object) -> int:
    with app.store.open_from(entity_type, entity_id, head) as stream:
        for _ in stream.all():
            pass
        stream.write(content)
        return int(stream.position)


class P4Run:
    """One rate's P4: the ticks written, when each append returned, the load around it."""

    def __init__(self, rate: float, first: int, total: int) -> None:
        self.rate, self.first, self.total = rate, first, total
        self.acked: dict[int, float] = {}  # tick -> when its append returned
        self.written_in = 0.0
        self.load_before = self.load_after = ""
        self.cpu: dict[str, float] = {}  # process -> CPU seconds spent during the run
        self.commands: dict[str, tuple[int, int]] = {}  # Redis command -> calls, usec


def measure_latency(
    app: ModuleType,
    folder: str,
    seconds: float,
    rate: float,
    first: int,
    entities: int,
    writers: int,
    groups: dict[str, int],
) -> P4Run:
    """P4: single-event appends at a steady rate over `entities` entities, written by
    `writers` asyncio tasks of this process through an AsyncStore (one sync thread cannot
    keep 3,000/s on a loaded 2-core machine); each task has its own share of the entities
    and of the schedule."""
    run = P4Run(rate, first, int(seconds * rate))
    run.load_before = load()
    stats = command_stats(app)
    before = cpu_seconds(groups)
    asyncio.run(_write_ticks(app, run, first, entities, writers))
    run.load_after = load()
    wanted = range(first, first + run.total)
    wait(
        lambda: sum(1 for n in timelines(folder) if n in wanted) >= run.total,
        "every tick to be handled",
        timeout=120,
    )
    after = cpu_seconds(groups)
    run.cpu = {name: after[name] - before[name] for name in after}
    for name, (calls, usec) in command_stats(app).items():
        was = stats.get(name, (0, 0))
        if calls > was[0]:
            run.commands[name] = (calls - was[0], usec - was[1])
    return run


def command_stats(app: ModuleType) -> dict[str, tuple[int, int]]:
    """Redis' INFO commandstats: each command's calls and microseconds so far."""
    info = redis.Redis.from_url(app.URL).info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(stat["calls"]), int(stat["usec"]))
        for name, stat in info.items()
    }


async def _write_ticks(
    app: ModuleType, run: P4Run, first: int, entities: int, writers: int
) -> None:
    client = redis.asyncio.Redis.from_url(app.URL)
    store = AsyncStore(AsyncRedisStorage(client, prefix=app.PREFIX), events={"tick": [app.Tick]})

    async def writer(part: int) -> None:
        heads: dict[str, int] = {}
        rng = random.Random(part)
        mine = range(part, entities, writers)
        for n in range(part, run.total, writers):
            delay = start + n / run.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            entity_id = f"t-{rng.choice(mine)}"
            tick = first + n
            async with store.open_from("tick", entity_id, heads.get(entity_id, 0)) as stream:
                async for _ in stream.all():
                    pass
                await stream.write(app.Tick(n=tick))
                run.acked[tick] = time.time()
                heads[entity_id] = int(stream.position)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(writer(part) for part in range(writers)))
        run.written_in = time.perf_counter() - start
    finally:
        await client.aclose()


def p4_latencies(
    run: P4Run, found: dict[int, list[float]], skip_s: float
) -> tuple[list[int], list[float]]:
    """The run's ticks past the first `skip_s` seconds, and each one's append -> handler ms."""
    skip = int(skip_s * run.rate)  # the first second: connections, imports, JIT of caches
    ticks = [n for n in range(run.first + skip, run.first + run.total) if n in found]
    return ticks, [(found[n][5] - found[n][0]) * 1000 for n in ticks]


def report_latency(run: P4Run, folder: str, skip_s: float) -> tuple[float, float, float]:
    """Prints P4 at one rate and its per-stage breakdown; returns p50, p99, max (ms)."""
    found = timelines(folder)
    ticks, p4 = p4_latencies(run, found, skip_s)
    achieved = run.total / run.written_in
    print(
        f"\nP4 at {run.rate:,.0f} appends/s ({achieved:,.0f}/s achieved by the writers), "
        f"load average 1/5 min {run.load_before} before, {run.load_after} after: "
        f"{len(p4)} ticks (first {skip_s:.0f} s dropped)"
    )
    p50, p99, top = percentile(p4, 0.5), percentile(p4, 0.99), max(p4)
    print(
        f"  append -> handler: p50 {p50:.1f} ms, p90 {percentile(p4, 0.9):.1f}, "
        f"p99 {p99:.1f}, max {top:.1f}, mean {statistics.fmean(p4):.1f}"
    )
    # An event whose delivery was begun for an earlier notice (read to the head) or by a
    # re-sent one has no stamps of its own: counted, not broken down.
    own = [n for n in ticks if all(v == v for v in found[n]) and found[n][1] >= found[n][0]]
    print(
        f"  stages of the {len(own)} ticks delivered by their own notice "
        f"({len(ticks) - len(own)} by an earlier or re-sent one); ms:"
    )
    print(
        f"  {'stage':<15}{'p50':>7}{'p90':>7}{'p99':>8}{'max':>8}{'mean':>7}   histogram "
        f"(<= {', '.join(f'{b:g}' for b in BUCKETS_MS)}, more)"
    )
    appended = [(run.acked[n] - found[n][0]) * 1000 for n in own if n in run.acked]
    rows = [("(append ack)", appended)] + [
        (name, [(found[n][b] - found[n][a]) * 1000 for n in own]) for name, a, b, _ in STAGES
    ]
    for name, values in rows:
        if values:
            print(
                f"  {name:<15}{percentile(values, 0.5):>7.2f}{percentile(values, 0.9):>7.2f}"
                f"{percentile(values, 0.99):>8.2f}{max(values):>8.2f}"
                f"{statistics.fmean(values):>7.2f}   {histogram(values)}"
            )
    if own:
        middle = sorted(own, key=lambda n: found[n][5] - found[n][0])[len(own) // 2]
        t0 = found[middle][0]
        marks = ", ".join(
            f"{name} +{(found[middle][b] - t0) * 1000:.2f}" for name, _, b, _ in STAGES
        )
        ack = f"append ack +{(run.acked[middle] - t0) * 1000:.2f}, " if middle in run.acked else ""
        print(f"  timeline of the median tick ({middle}), ms after its event_time: {ack}{marks}")
    if run.cpu:
        spent = ", ".join(
            f"{name} {seconds / run.total * 1e6:,.0f}" for name, seconds in run.cpu.items()
        )
        total, cpus = sum(run.cpu.values()), os.cpu_count() or 1
        print(
            f"  CPU per event written (us, user + system): {spent}; total "
            f"{total / run.total * 1e6:,.0f} = {total / run.written_in / cpus:.0%} "
            f"of the {cpus} CPUs over the writing"
        )
    if run.commands:
        busiest = sorted(run.commands.items(), key=lambda item: -item[1][1])[:8]
        print(
            "  Redis commands per event written (calls, us): "
            + ", ".join(
                f"{name} {calls / run.total:.2f} x {usec / run.total:.1f}"
                for name, (calls, usec) in busiest
            )
        )
    return p50, p99, top


def own_redis(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the bench's own on a free port (no persistence): quieter figures."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            folder,
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis.Redis(port=port)
    wait(lambda: _answers(client), "the bench's redis-server", timeout=20)
    return server, f"redis://127.0.0.1:{port}/0"


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


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
            heads[entity_id] = write_one(
                app, entity_type, entity_id, heads.get(entity_id, 0), app.Added(amount=n)
            )

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


def start_app(app: ModuleType, processes: Processes, folder: str) -> subprocess.Popen[bytes]:
    """Starts the publisher and a worker and waits until a tick is handled; returns the
    publisher."""
    publisher = processes.publisher()
    processes.worker()
    write_one(app, "tick", "warm-up", 0, app.Tick(n=-1))
    wait(lambda: -1 in timelines(folder), "the worker to start", timeout=120)
    # Let the publisher finish handing new subscribers their (empty) history.
    state = app.store.storage.state
    wait(lambda: state.is_caught_up("bulk", "bulk"), "catch-up")
    return publisher


def finish(folder: str, keep: bool) -> None:
    if keep:
        print(f"\nstamp files kept in {folder} (tick, event_time, then {', '.join(STAMP_NAMES)})")
    else:
        shutil.rmtree(folder, ignore_errors=True)


STAMP_NAMES = ["read", "sent", "fetched", "started", "handler", "handled", "done"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=10.0, help="P4 duration")
    parser.add_argument(
        "--rates",
        default="200,1000,3000",
        help="P4 appends per second, one run each (comma-separated)",
    )
    parser.add_argument("--p4-entities", type=int, default=1000, help="P4 entities")
    parser.add_argument("--writers", type=int, default=16, help="P4 writer tasks (asyncio)")
    parser.add_argument("--p4-only", action="store_true", help="skip P5")
    parser.add_argument(
        "--profile-publisher",
        metavar="FILE",
        help="run the publisher under cProfile, its stats to FILE.<n>",
    )
    parser.add_argument(
        "--own-redis",
        action="store_true",
        help="start a redis-server of the bench's own on a free port (instead of --redis-url)",
    )
    parser.add_argument(
        "--keep-stamps",
        action="store_true",
        help="keep the workers' stamp files (latency-<pid>.txt) and print where",
    )
    parser.add_argument("--events", type=int, default=20_000, help="P5 backlog")
    parser.add_argument("--entities", type=int, default=1000, help="P5 entities")
    parser.add_argument(
        "--single",
        type=int,
        default=5000,
        help="P5 worst case: events over as many entities (0: skip)",
    )
    parser.add_argument("--noop-messages", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--worker-timeout",
        type=int,
        default=20,
        help="ms (es-workers' default; with --broker polling, the poll interval)",
    )
    parser.add_argument(
        "--broker",
        choices=["waking", "polling"],
        default="waking",
        help="waking: WakingRedisBroker (es-workers' default); polling: Dramatiq's RedisBroker",
    )
    args = parser.parse_args()

    rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    prefix = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    folder = tempfile.mkdtemp(prefix="es-bench-")
    server = None
    if args.own_redis:
        server, args.redis_url = own_redis(folder)
    env = dict(
        os.environ,
        BENCH_REDIS_URL=args.redis_url,
        BENCH_PREFIX=prefix,
        BENCH_DIR=folder,
        ES_REDIS_URL=args.redis_url,
        BENCH_BROKER=args.broker,
        PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
    )
    os.environ.update(
        {k: env[k] for k in ("BENCH_REDIS_URL", "BENCH_PREFIX", "BENCH_DIR", "BENCH_BROKER")}
    )
    sys.path.insert(0, str(ROOT))
    import bench.e2e_app as app

    client = redis.Redis.from_url(args.redis_url)
    processes = Processes(env, Path(folder), args)
    runs: list[P4Run] = []
    try:
        publisher = start_app(app, processes, folder)

        groups = {"publisher": publisher.pid, "worker": processes.running[1].pid}
        if server is not None:
            groups["redis"] = server.pid
        first = 0
        for rate in rates:
            runs.append(
                measure_latency(
                    app,
                    folder,
                    args.seconds,
                    rate,
                    first,
                    args.p4_entities,
                    args.writers,
                    groups,
                )
            )
            first += runs[-1].total
        if not args.p4_only:
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
        if server is not None:
            server.terminate()
            server.wait(timeout=15)
        logs = folder
    print(
        f"\nes_workers end to end on {args.redis_url} "
        f"({'a redis-server of its own, ' if server else ''}"
        f"{'es-workers CLI' if processes.cli else 'python -c / python -m dramatiq'})"
    )
    print(
        f"broker: {args.broker}; "
        f"worker: {args.processes} process x {args.threads} threads, dramatiq_worker_timeout="
        f"{args.worker_timeout} ms; publisher: 1 process; writer: this process, "
        f"{args.writers} asyncio tasks (AsyncStore); {os.cpu_count()} CPUs"
    )
    rows: list[tuple[str, str, str, bool | None]] = []
    for run in runs:
        p50, p99, top = report_latency(run, folder, min(1.0, args.seconds / 4))
        rows.append(
            (
                f"P4 at {run.rate:,.0f}/s p50/p99/max",
                f"{p50:.1f} / {p99:.1f} / {top:.1f} ms",
                f"load {run.load_after}",
                None,
            )
        )
    if args.p4_only:
        print(f"\n{'figure':<28} {'measured':<28} {'':<10}")
        for name, value, goal, _ in rows:
            print(f"{name:<28} {value:<28} {goal}")
        finish(logs, args.keep_stamps)
        return
    ratio = p5_rate / noop_rate
    rows += [
        (
            "P5 events/s / no-op msgs/s",
            f"{p5_rate:,.0f} / {noop_rate:,.0f} = {ratio:.2f}",
            ">= 1.0",
            ratio >= 1.0,
        ),
    ]
    if args.single:
        single_ratio = single_rate / noop_rate
        rows.append(
            (
                "P5 one event per entity",
                f"{single_rate:,.0f} / {noop_rate:,.0f} = {single_ratio:.2f}",
                ">= 1.0",
                single_ratio >= 1.0,
            )
        )
    print(
        f"P5: {args.events} single-event appends over {args.entities} entities written at "
        f"{write_rate:,.0f}/s with the publisher stopped, handled in {p5_seconds:.2f} s; "
        f"no-op actor: {args.noop_messages} messages"
    )
    if args.single:
        print(
            f"P5 one event per entity: {args.single} events over {args.single} entities "
            "(no notice coalesces two events of an entity; the publisher names up to 32 "
            "entities of a partition per message)"
        )
    print(f"\n{'figure':<28} {'measured':<28} {'goal':<10} result")
    for name, value, goal, ok in rows:
        result = "" if ok is None else "PASS" if ok else "MISS"
        print(f"{name:<28} {value:<28} {goal:<10} {result}")
    finish(logs, args.keep_stamps)


if __name__ == "__main__":
    main()
