"""Appends and delivery with an archiver running against without, in the same run (issue 22:
P1 and P4 within 10% of without).

    python bench/archive_impact.py [--rounds 3] [--seconds 5] [--rates 200,1000]
                                   [--feed 2000] [--cold-entities 500] [--hot 20]
                                   [--scavenge-ms 0] [--archiver-nice N]

Starts a Redis server of its own, a database of its own on the PostgreSQL of --postgres-url
(dropped at the end), and bench/e2e.py's app (bench/e2e_app.py, here with an archive) as a
publisher and a worker process. A feeder process writes `cold` events all along, --feed
events/s in 10-event writes over --cold-entities entities whose hot window is --hot events,
so that the store always has events past the window. Each round runs the measures once
without and once with an `es-workers archive` process (the order alternates; the archiver is
started, allowed to catch up with the backlog of the round without it, and stopped after).
The archiver scavenges after its passes (`es-workers archive`'s default) and runs at its
default niceness (`ES_ARCHIVE_NICE`, 10; `--archiver-nice N` sets it); `--scavenge-ms N`
also has the publisher scavenge every N ms, which pauses its relay meanwhile:

P1  single-event appends/s through one Stream (bench/append.py's `Bench.single_writes`)
    / raw sequential XADD/s, in this process;
P4  append -> handler latency at each of --rates single-event appends/s over 1,000 entities
    (bench/e2e.py's `measure_latency`), p50 and p99.

Prints each round, the CPU each process spent during each P4 (from /proc), then the
medians over the rounds with the archiver / without (goal: appends/s >= 0.9x, latencies
<= 1.1x) and the range of the rounds without (the noise a ratio is read against), and the
median of each round's own with / without (less moved by load that drifts). The
archiver's work in the with-rounds is printed too: the events it archived while the
measures ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.append import Bench, delete_prefix  # noqa: E402
from bench.archive import own_database  # noqa: E402
from bench.e2e import (  # noqa: E402
    APP,
    Processes,
    load,
    measure_latency,
    own_redis,
    p4_latencies,
    percentile,
    start_app,
    timelines,
    wait,
)


class ArchiveProcesses(Processes):
    """bench/e2e.py's processes, and the archiver and the feeder."""

    def archiver(self) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if self.args.archiver_nice is not None:
            env["ES_ARCHIVE_NICE"] = str(self.args.archiver_nice)
        return self._start(
            "archiver", [str(Path(sys.executable).parent / "es-workers"), "archive", APP], env)

    def feeder(self) -> subprocess.Popen[bytes]:
        a = self.args
        return self._start("feeder", [sys.executable, __file__, "--run-feeder", "--feed",
                                      str(a.feed), "--cold-entities", str(a.cold_entities)],
                           self.env)


def run_feeder(rate: float, entities: int) -> None:
    """The feeder process: `cold` events at `rate` events/s, 10 per write, round robin."""
    import bench.e2e_app as app

    heads = [0] * entities
    started = time.perf_counter()
    written = 0
    while True:
        delay = started + written / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        entity = (written // 10) % entities
        with app.store.open_from("cold", f"c-{entity}", heads[entity]) as stream:
            for _ in stream.all():
                pass
            stream.write(*(app.Added(amount=written + i) for i in range(10)))
            heads[entity] = int(stream.position)
        written += 10


def cold_backlog(app: ModuleType) -> int:
    """Events of `cold` past the hot window, archived or not (from the entities' heads)."""
    storage = app.store.storage
    total = 0
    for partition in range(storage.partitions):
        heads = storage.client.hvals(storage.keys.heads("cold", partition))
        total += sum(max(0, int(head) - app.ARCHIVE_HOT) for head in heads)
    return total


def archived(app: ModuleType) -> int:
    return app.store.storage.archive.counts().get("cold", (0, 0))[0]


@dataclass
class Round:
    archiver: bool
    single: float = 0.0  # appends/s
    xadd: float = 0.0
    p4: dict[float, tuple[float, float]] = field(default_factory=dict)  # rate -> p50, p99
    cpu: dict[float, dict[str, float]] = field(default_factory=dict)  # rate -> process -> s
    archived: int = 0
    load: str = ""


def measure(app: ModuleType, args: argparse.Namespace, folder: str, bench: Bench,
            first: int, row: Round, groups: dict[str, int]) -> int:
    """P1 then P4 at each rate into `row` (with the CPU seconds each process of `groups`
    spent during P4); returns the next free tick number."""
    singles, xadds = [], []
    for _ in range(3):
        xadds.append(bench.raw_xadd())
        singles.append(bench.single_writes())
    row.single, row.xadd = max(singles), max(xadds)
    for rate in args.rates:
        run = measure_latency(app, folder, args.seconds, rate, first, 1000, args.writers,
                              groups)
        first += run.total
        row.cpu[rate] = run.cpu
        _, p4 = p4_latencies(run, timelines(folder), min(1.0, args.seconds / 4))
        row.p4[rate] = (percentile(p4, 0.5), percentile(p4, 0.99))
    row.load = load()
    return first


def one_round(app: ModuleType, args: argparse.Namespace, processes: ArchiveProcesses,
              folder: str, bench: Bench, first: int, row: Round,
              groups: dict[str, int]) -> int:
    if not row.archiver:
        return measure(app, args, folder, bench, first, row, groups)
    backlog = cold_backlog(app)
    archiver = processes.archiver()
    try:
        try:
            wait(lambda: archived(app) >= backlog, "the archiver to catch up", timeout=120)
        except SystemExit:
            for log in sorted(processes.logs.glob("archiver-*.log")):  # what it said
                print(f"--- {log.name}:\n" + log.read_text(errors="replace")[-3000:])
            raise
        at_start = archived(app)
        first = measure(app, args, folder, bench, first, row,
                        {**groups, "archiver": archiver.pid})
        row.archived = archived(app) - at_start
    finally:
        processes.stop(archiver)
    return first


def ratio(rows: list[Round], value: object) -> tuple[float, float, float]:
    """Medians with and without the archiver, and with / without."""
    with_ = statistics.median(value(r) for r in rows if r.archiver)  # type: ignore[operator]
    without = statistics.median(value(r) for r in rows if not r.archiver)  # type: ignore[operator]
    return with_, without, with_ / without


def report(rows: list[Round], args: argparse.Namespace) -> None:
    print("\n| round | archiver | single appends/s | raw XADD/s | P1 | "
          + " | ".join(f"P4 p50 / p99 at {r:,.0f}/s (ms)" for r in args.rates)
          + " | archived meanwhile | load 1/5 min |")
    print("|---" * (6 + len(args.rates)) + "|")
    for number, row in enumerate(rows):
        p4 = " | ".join(f"{row.p4[r][0]:.1f} / {row.p4[r][1]:.1f}" for r in args.rates)
        print(f"| {number // 2 + 1} | {'yes' if row.archiver else 'no'} | {row.single:,.0f} | "
              f"{row.xadd:,.0f} | {row.single / row.xadd:.2f} | {p4} | "
              f"{row.archived:,} | {row.load} |")
    print("\nCPU during each P4 (s of CPU per s written, from /proc; the writer is this "
          "process):")
    for number, row in enumerate(rows):
        for rate in args.rates:
            spent = ", ".join(f"{name} {seconds / args.seconds:.2f}"
                              for name, seconds in sorted(row.cpu[rate].items()))
            print(f"  round {number // 2 + 1} {'with' if row.archiver else 'without'} at "
                  f"{rate:,.0f}/s: {spent}")
    print(f"\nmedians of {args.rounds} rounds, with the archiver / without (goal: appends "
          ">= 0.9x, latencies <= 1.1x):")
    figures = [("single appends/s", lambda r: r.single, "higher"),
               ("P1 (appends / raw XADD)", lambda r: r.single / r.xadd, "higher")]
    for rate in args.rates:
        figures += [(f"P4 p50 at {rate:,.0f}/s (ms)", lambda r, q=rate: r.p4[q][0], "lower"),
                    (f"P4 p99 at {rate:,.0f}/s (ms)", lambda r, q=rate: r.p4[q][1], "lower")]
    for name, value, better in figures:
        with_, without, times = ratio(rows, value)
        alone = [value(r) for r in rows if not r.archiver]
        print(f"  {name:<26} {with_:>10,.2f} / {without:>10,.2f} = {times:.3f}x ({better} is "
              f"better; without: {min(alone):,.2f} to {max(alone):,.2f})")
    # Each round's with and without run a minute apart: their ratio moves less with load
    # that drifts over the run (other work on the machine) than the medians' ratio.
    print("\nmedian of each round's own with / without (and its range over the rounds):")
    for name, value, _ in figures:
        paired = [value(a) / value(b) for a, b in zip(rows[::2], rows[1::2], strict=False)]
        paired = [1 / r if a.archiver else r for r, a in zip(paired, rows[1::2], strict=False)]
        print(f"  {name:<26} {statistics.median(paired):.3f}x ({min(paired):.2f} to "
              f"{max(paired):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres-url",
                        default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL where the bench may create a database")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="P4 duration per rate")
    parser.add_argument("--rates", default="200,1000", help="P4 appends/s (comma-separated)")
    parser.add_argument("--writers", type=int, default=16, help="P4 writer tasks (asyncio)")
    parser.add_argument("--n", type=int, default=3000, help="P1 appends per measure")
    parser.add_argument("--feed", type=float, default=2000.0,
                        help="cold events/s written all along (10 per write)")
    parser.add_argument("--cold-entities", type=int, default=500)
    parser.add_argument("--hot", type=int, default=20, help="the cold events' hot window")
    parser.add_argument("--scavenge-ms", type=int, default=0,
                        help="how often the publisher scavenges too (0: never)")
    parser.add_argument("--archiver-nice", type=int, default=None,
                        help="the archiver's ES_ARCHIVE_NICE (default: the setting's, 10; 0: "
                        "as the others)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    parser.add_argument("--worker-timeout", type=int, default=20, help="ms")
    parser.add_argument("--run-feeder", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_feeder:
        run_feeder(args.feed, args.cold_entities)
        return 0
    args.rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    args.profile_publisher = None
    folder = tempfile.mkdtemp(prefix="es-bench-impact-")
    server, url = own_redis(folder)
    try:
        with own_database(args.postgres_url) as archive_url:
            return run(args, folder, url, archive_url, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, folder: str, url: str, archive_url: str,
        server_pid: int) -> int:
    prefix = f"bench-impact-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, BENCH_REDIS_URL=url, BENCH_PREFIX=prefix, BENCH_DIR=folder,
               BENCH_ARCHIVE_URL=archive_url, BENCH_ARCHIVE_HOT=str(args.hot), ES_REDIS_URL=url,
               BENCH_SCAVENGE_MS=str(args.scavenge_ms),
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                        str(ROOT)])))
    os.environ.update({k: v for k, v in env.items() if k.startswith("BENCH_")})
    import bench.e2e_app as app

    app.store.storage.archive.init()
    client = redis.Redis.from_url(url)
    bench = Bench(client, f"{prefix}-p1", args.n)
    processes = ArchiveProcesses(env, Path(folder), args)
    rows: list[Round] = []
    try:
        publisher = start_app(app, processes, folder)
        groups = {"publisher": publisher.pid, "worker": processes.running[1].pid,
                  "redis": server_pid}
        processes.feeder()
        wait(lambda: cold_backlog(app) > 0, "the feeder's events past the hot window")
        first = 0
        for number in range(args.rounds):
            for archiver in ((False, True) if number % 2 == 0 else (True, False)):
                rows.append(Round(archiver))
                first = one_round(app, args, processes, folder, bench, first, rows[-1],
                                  groups)
                print(f"round {number + 1}, archiver {'running' if archiver else 'stopped'}: "
                      f"done (load {rows[-1].load})", flush=True)
    finally:
        processes.stop_all()
        delete_prefix(client, prefix)
        delete_prefix(client, f"{prefix}-p1")
        delete_prefix(client, f"{prefix}-dq")
    print(f"\nRedis {url} of the bench's own; PostgreSQL {args.postgres_url.rsplit('@')[-1]}; "
          f"feeder: {args.feed:,.0f} cold events/s over {args.cold_entities} entities, hot "
          f"window {args.hot}; the publisher scavenges every {args.scavenge_ms} ms (0: never); "
          f"archiver ES_ARCHIVE_NICE "
          f"{'default' if args.archiver_nice is None else args.archiver_nice}; "
          f"worker 1 process x {args.threads} threads; {os.cpu_count()} CPUs")
    report(rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
