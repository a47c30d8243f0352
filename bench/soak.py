"""Soak: real writers, `es-workers publish` and two `es-workers worker` on a real Redis.

    python bench/soak.py [--entities 200] [--events 600] [--seconds 60] [--writers 2]
                         [--redis-url URL] [--partitions 16] [--keep]

Writer processes append `--events` events over `--entities` entities (`counter` c0, c1,
...), in rounds, single-event and 2-5 event writes mixed. Two subscribers: `tally` always
succeeds; `flaky` fails a few deliveries (retried) and keeps failing on event 2 of every
`SOAK_PARK_EVERY`-th entity (parked: about five entities). Halfway through the writing one
worker is killed with `kill -9` and started again.

After the writers finish the bench polls `es_workers.admin.status` until the outbox is
empty and no subscriber lags except on parked entities (at most `--seconds`), then checks:

- every event handled by each subscriber (parked entities: up to the failing event), and
  counts repeats (a worker killed between handler and checkpoint);
- the keys under the prefix per kind (stream, heads, index, outbox, checkpoints, ...)
  against what the entities and subscribers should leave (anything else is a leftover);
- Redis memory per event (MEMORY USAGE of the prefix's keys; the server's used_memory
  delta too, which other users of a shared server blur);
- VmRSS of the publisher and of the workers (each worker's process group) after warm-up
  (10% written) and at the end.

Exit status 1 if it did not drain in time, an event was not handled or a key of ours was
left beyond the formula (Dramatiq's own keys are shown, not checked); memory per event and
RSS growth are shown with PASS/MISS against P7's 300 B and +20%. The default size is a
smoke run (well under a minute); the bench deletes its keys at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
APP = "bench.soak_app:store"
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")
SUBSCRIBERS = ("tally", "flaky")
P7_BOUND = 300  # bytes per event (bench/append.py's P7 goal)
RSS_GROWTH = 0.20  # of a process's RSS after warm-up, at the end
BROKER_KEYS = "dramatiq"  # Dramatiq's own (queues, acks of live workers): shown, not checked
ENTITY_TYPE = "counter"


# -- the writers -----------------------------------------------------------------------------

def events_per_entity(entities: int, events: int) -> list[int]:
    """The head each entity ends at: events spread evenly, the first ones one more."""
    return [events // entities + (i < events % entities) for i in range(entities)]


def run_writer(part: int, parts: int, entities: int, events: int) -> None:
    """Appends this writer's share (entities i with i % parts == part), in rounds."""
    app = importlib.import_module("bench.soak_app")
    heads = events_per_entity(entities, events)
    mine = [i for i in range(part, entities, parts)]
    left = {i: heads[i] for i in mine if heads[i] > 0}
    streams: dict[int, Any] = {}
    rng = random.Random(part)
    written = appends = 0
    counter = f"{app.PREFIX}:soak:written"
    while left:
        order = list(left)
        rng.shuffle(order)
        for i in order:
            stream = streams.get(i)
            if stream is None:
                stream = streams[i] = app.store.open(ENTITY_TYPE, f"c{i}")
            size = 1 if rng.random() < 0.7 else min(left[i], rng.randint(2, 5))
            contents = [
                app.Added(amount=n) if n % 2 == 0 else app.Noted(text=f"note {n} ✓")
                for n in range(stream.position + 1, stream.position + size + 1)
            ]
            stream.write(*contents)
            left[i] -= size
            if left[i] == 0:
                del left[i]
                del streams[i]  # a long run should not keep every entity's stream
            written += size
            appends += 1
            if written >= 200:
                app.client.incrby(counter, written)
                written = 0
    app.client.incrby(counter, written)
    app.client.incrby(f"{app.PREFIX}:soak:appends", appends)


# -- processes -------------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    """VmRSS of one process, 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def group_rss_kb(pgid: int) -> tuple[int, int]:
    """(sum of VmRSS, number of processes) of a process group: Dramatiq forks its workers."""
    total = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
            total += rss_kb(int(entry.name))
            count += 1
    return total, count


class Processes:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.started = 0
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        self.started += 1
        out = open(self.logs / f"{name}-{self.started}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            list(argv), cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # a group of its own: kill reaches Dramatiq's children
        )
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            stop(process, signal.SIGTERM)

    def publisher(self) -> subprocess.Popen[bytes]:
        return self.start("publisher", ES_WORKERS, "publish", APP)

    def worker(self, n: int) -> subprocess.Popen[bytes]:
        return self.start(f"worker{n}", ES_WORKERS, "worker", APP, "--processes", "1",
                          "--threads", "4")

    def writer(self, part: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
        return self.start(f"writer{part}", sys.executable, "-m", "bench.soak", "--writer",
                          str(part), "--writers", str(args.writers), "--entities",
                          str(args.entities), "--events", str(args.events))


def stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


# -- measuring -------------------------------------------------------------------------------

@dataclass
class Report:
    rows: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        self.rows.append((name, str(value)))

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def print(self) -> None:
        width = max(len(name) for name, _ in self.rows)
        for name, value in self.rows:
            print(f"{name:<{width}}  {value}")
        for message in self.failures:
            print(f"FAILED: {message}")


def key_kind(prefix: str, key: str) -> str:
    """The kind segment of a key: `<prefix>:{<tag>}:<kind>:...` or `<prefix>:<kind>...`."""
    rest = key[len(prefix) + 1:]
    if rest.startswith("{"):
        rest = rest.split("}:", 1)[1]
    return rest.split(":", 1)[0]


def keys_by_kind(client: redis.Redis, prefix: str) -> tuple[Counter[str], Counter[str]]:
    """Per kind: how many keys, and their MEMORY USAGE in bytes."""
    counts: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    batch: list[str] = []

    def measure() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)  # 0: every element, not a sample
        for key, used in zip(batch, pipe.execute(), strict=True):
            memory[key_kind(prefix, key)] += int(used or 0)
        batch.clear()

    for raw in client.scan_iter(f"{prefix}:*", count=1000):
        key = raw.decode()
        counts[key_kind(prefix, key)] += 1
        batch.append(key)
        if len(batch) >= 1000:
            measure()
    measure()
    return counts, memory


def drained(app: ModuleType, report: Report, deadline: float, entities: int) -> Any:
    """Polls admin.status until nothing lags but parked entities; the last status."""
    from es_workers import admin

    # A status reads every head and checkpoint: poll a big store less often.
    pause = min(5.0, max(0.5, entities / 10_000))
    while True:
        status = admin.status(app.store)
        lagging = [
            s for s in status.subscribers if s.lagging_entities != len(s.parked)
        ]
        if status.outbox_backlog == 0 and not lagging:
            return status
        if time.monotonic() > deadline:
            report.fail(
                f"not drained in time: outbox backlog {status.outbox_backlog}, "
                + ", ".join(f"{s.subscriber_id} lags on {s.lagging_entities} entities "
                            f"({len(s.parked)} parked)" for s in status.subscribers)
            )
            return status
        time.sleep(pause)


def check_handled(app: ModuleType, heads: list[int], status: Any, report: Report) -> None:
    parked = {p.entity_id: p.event_number for s in status.subscribers for p in s.parked
              if s.subscriber_id == "flaky"}
    for subscriber_id in SUBSCRIBERS:
        counts = {k.decode(): int(v) for k, v in
                  app.client.hgetall(app.handled_key(subscriber_id)).items()}
        missing = repeats = 0
        for i, head in enumerate(heads):
            entity_id = f"c{i}"
            expected = head
            if subscriber_id == "flaky" and entity_id in parked:
                expected = parked[entity_id] - 1
            seen = counts.get(entity_id, 0)
            missing += max(0, expected - seen)
            repeats += max(0, seen - expected)
        report.add(f"{subscriber_id}: events not handled", missing)
        report.add(f"{subscriber_id}: events handled twice", repeats)
        if missing:
            report.fail(f"{subscriber_id} did not handle {missing} events")
    doomed = sum(1 for i, head in enumerate(heads) if head >= 2 and app.doomed(f"c{i}"))
    report.add("flaky: entities parked (expected)", f"{len(parked)} ({doomed})")
    if len(parked) != doomed:
        report.fail(f"{len(parked)} entities parked, {doomed} expected")


def expected_keys(app: ModuleType, entities: int, parked: list[str]) -> dict[str, int]:
    """What a drained store should hold: per entity a stream, per partition one heads,
    index, outbox and log, per subscriber and partition a checkpoints hash; a parked hash
    per partition where an entity is parked (parking clears its failure count); no failure
    counts, backoffs, locks, notices due or catch-up cursors."""
    storage = app.store.storage
    partitions = storage.partitions
    parked_partitions = len({storage.keys.partition(ENTITY_TYPE, e) for e in parked})
    used = min(partitions, entities)
    return {
        "stream": entities,
        "heads": used,
        "index": used,
        "outbox": used,
        "log": used,  # the partition's log (kept whole: ES_LOG_KEEP unset)
        "checkpoints": len(SUBSCRIBERS) * used,
        "failures": 0,
        "retry-at": 0,  # backoffs: cleared by the next success or by parking
        "parked": parked_partitions,
        "lock": 0,
        "due": 0,
        "resent": 0,  # re-sent notices: forgotten once a worker begins their entity
        "started": len(SUBSCRIBERS) * used,  # deliveries begun per subscriber and partition
        "caught-up": 1,
        "catch-up": 0,
        "meta": 1,
        "heartbeats": 1,  # the workers' liveness hash
        "subscribers": 1,  # the subscriber IDs run under the prefix, and their entity types
        "soak": 4,  # the bench's own: written, appends, and one hash per subscriber
    }


# -- the run ---------------------------------------------------------------------------------

def main() -> int:
    args = parse_args()
    if args.writer is not None:
        run_writer(args.writer, args.writers, args.entities, args.events)
        return 0
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ES_REDIS_URL": args.redis_url,
        "ES_PREFIX": prefix,
        "ES_PARTITIONS": str(args.partitions),
        "ES_LOG_LEVEL": "WARNING",
        "ES_MAX_ATTEMPTS": "4",
        "ES_MIN_BACKOFF_MS": "20",
        "ES_MAX_BACKOFF_MS": "200",
        "ES_LOCK_MS": "2000",
        "ES_REDRIVE_AFTER_MS": "2000",
        "ES_PUBLISHER_CLAIM_IDLE_MS": "2000",
        "SOAK_FLAKY": "0.02",
        "SOAK_PARK_EVERY": str(max(1, args.entities // 5)),
    }
    os.environ.update(env)  # this process opens the same store to watch it
    sys.path.insert(0, str(ROOT))
    app = importlib.import_module("bench.soak_app")
    logs = Path(args.logs or f"/tmp/{prefix}")
    logs.mkdir(parents=True, exist_ok=True)
    processes = Processes(env, logs)
    report = Report()
    try:
        run(args, app, processes, report)
    finally:
        processes.stop_all()
        if not args.keep:
            delete_prefix(app.client, prefix)
    report.print()
    return 1 if report.failures else 0


def run(args: argparse.Namespace, app: ModuleType, processes: Processes, report: Report) -> None:
    client: redis.Redis = app.client
    heads = events_per_entity(args.entities, args.events)
    baseline = int(client.info("memory")["used_memory"])
    publisher = processes.publisher()
    workers = [processes.worker(0), processes.worker(1)]
    booted = time.monotonic() + 60
    while any(group_rss_kb(w.pid)[1] < 2 for w in workers):  # Dramatiq has forked its worker
        if time.monotonic() > booted:
            raise SystemExit(f"the workers did not start in 60 s: logs in {processes.logs}")
        time.sleep(0.1)
    started = time.monotonic()
    writers = [processes.writer(part, args) for part in range(args.writers)]
    warm: dict[str, tuple[int, str]] = {}
    killed = False
    while any(w.poll() is None for w in writers):
        written = int(client.get(f"{app.PREFIX}:soak:written") or 0)
        if not warm and written >= args.events // 10:
            warm = rss_row(publisher, workers)
        if not killed and written >= args.events // 2:
            stop(workers[0], signal.SIGKILL)
            workers[0] = processes.worker(0)
            killed = True
            report.add("worker 0 killed (kill -9) at", f"{written} events written")
        time.sleep(0.1)
    write_seconds = time.monotonic() - started
    for w in writers:
        if w.returncode != 0:
            report.fail(f"a writer exited with {w.returncode} (logs in {processes.logs})")
    if not killed:  # the writers were quicker than the polling: kill during the drain
        report.add("worker 0 killed (kill -9) at", "the start of the drain")
        stop(workers[0], signal.SIGKILL)
        workers[0] = processes.worker(0)
    if not warm:
        warm = rss_row(publisher, workers)
    status = drained(app, report, time.monotonic() + args.seconds, args.entities)
    drain_seconds = time.monotonic() - started - write_seconds
    time.sleep(2.5)  # locks of the killed worker expire (ES_LOCK_MS), sweeps settle
    end = rss_row(publisher, workers)
    check_handled(app, heads, status, report)
    counts, memory = keys_by_kind(client, app.PREFIX)
    used_memory = int(client.info("memory")["used_memory"]) - baseline
    parked = [p.entity_id for s in status.subscribers for p in s.parked]
    report_run(report, app, args, write_seconds, drain_seconds, warm, end)
    report_keys(report, counts, memory, expected_keys(app, args.entities, parked), used_memory,
                args.events)


def rss_row(publisher: subprocess.Popen[bytes],
            workers: list[subprocess.Popen[bytes]]) -> dict[str, tuple[int, str]]:
    """Per process (a worker: its process group), (VmRSS in KiB, as shown)."""
    kib = rss_kb(publisher.pid)
    row = {"publisher": (kib, f"{kib / 1024:.1f} MiB")}
    for n, worker in enumerate(workers):
        total, count = group_rss_kb(worker.pid)
        row[f"worker {n}"] = (total, f"{total / 1024:.1f} MiB in {count} processes")
    return row


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def report_run(report: Report, app: ModuleType, args: argparse.Namespace, write_seconds: float,
               drain_seconds: float, warm: dict[str, tuple[int, str]],
               end: dict[str, tuple[int, str]]) -> None:
    appends = int(app.client.get(f"{app.PREFIX}:soak:appends") or 0)
    report.add("entities / events / appends / writers",
               f"{args.entities} / {args.events} / {appends} / {args.writers}")
    report.add("writing, from the writers' start (s)",
               f"{write_seconds:.1f} ({args.events / write_seconds:.0f} events/s)")
    report.add("drain after writing (s)", f"{drain_seconds:.1f}")
    for name in warm:
        report.add(f"RSS {name} after warm-up", warm[name][1])
        growth = end[name][0] / warm[name][0] - 1 if warm[name][0] else 0.0
        report.add(f"RSS {name} at the end", f"{end[name][1]} ({growth:+.0%}: "
                   f"{verdict(growth <= RSS_GROWTH)} within +{RSS_GROWTH:.0%})")


def report_keys(report: Report, counts: Counter[str], memory: Counter[str],
                expected: dict[str, int], used_memory: int, events: int) -> None:
    for kind in sorted(set(counts) | set(expected)):
        want = expected.get(kind)
        found = counts.get(kind, 0)
        note = "" if want is None or want == found else f"  <- expected {want}"
        report.add(f"keys {kind}", f"{found} ({memory.get(kind, 0) / 1024:.0f} KiB){note}")
        if want != found and kind != BROKER_KEYS:
            report.fail(f"{found} {kind} keys left, expected {want or 0}")
    total = sum(memory.values())
    report.add("memory of the prefix per event", f"{total / events:.0f} B")
    report.add("memory of entity streams per event", f"{memory.get('stream', 0) / events:.0f} B")
    per_event = used_memory / events
    report.add("server used_memory delta per event",
               f"{per_event:.0f} B ({verdict(per_event <= P7_BOUND)} against P7's {P7_BOUND})")


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=200)
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="longest wait for the drain after writing")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--redis-url",
                        default=os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--logs", help="folder for the processes' logs (default /tmp/<prefix>)")
    parser.add_argument("--keep", action="store_true", help="keep the keys for a look")
    parser.add_argument("--writer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.entities < 1 or args.events < args.entities:
        parser.error("need --entities >= 1 and --events >= --entities")
    return args


if __name__ == "__main__":
    sys.exit(main())
