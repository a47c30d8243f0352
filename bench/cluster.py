"""Redis Cluster and RabbitMQ figures, each against one Redis in the same run.

    python bench/cluster.py [--redis-url URL] [--appends 3000] [--rounds 3] [--seconds 8]
                            [--rate 200] [--port-base 8650]

It starts a 3-master Redis Cluster of its own (tests/servers.py, ports --port-base (8650)..+2 and
+10000) and a RabbitMQ vhost of its own (RabbitMQ must run on 127.0.0.1:5672), and uses the
standalone Redis at --redis-url under a key prefix of its own (deleted at the end).

C1  appends/s of 3 writer processes (single-event `stream.write`, 50 entities each) on the
    cluster / the same on one Redis; best of --rounds interleaved rounds. On a 2-core
    machine this shows the cluster's client overhead, not scaling. Goal >= 0.8.
C2  P4 append-to-handler latency, p50/p99, at --rate single-event appends/s: `es-workers
    publish` and `es-workers worker` processes on the cluster with RabbitMQ, and for
    comparison on one Redis with its Redis broker (the default deployment), one Redis with
    RabbitMQ, and the cluster with the standalone Redis as broker.
C3  the publisher's cost of more partitions on the cluster, at 16 and 64 partitions: the
    time of a round reading every (empty) outbox, which a publisher does each block_ms; of
    draining 5,000 outbox entries; and the commands/s an idle publisher sends with 3
    subscribers (its sweep reads a due set per subscriber and partition every second).
Also printed, from the masters' `INFO commandstats`: the server time per append script call
(during C1), and per event end to end during C2 on the cluster (append, publisher, one
subscriber's scripts and reads): server time, and commands per event with their time per
call. The README's estimate of events/s per master rests on them.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402
import servers  # noqa: E402  (tests/servers.py)
from dramatiq.brokers.stub import StubBroker  # noqa: E402

from bench.cluster_app import Tick, build  # noqa: E402
from es_workers import RedisStorage, Store  # noqa: E402
from es_workers.redis.publisher import Publisher  # noqa: E402
from es_workers.settings import Settings  # noqa: E402
from es_workers.wiring import redis_client  # noqa: E402
from es_workers.workers.bus import DramatiqEventBus  # noqa: E402

ES_WORKERS = str(Path(sys.executable).parent / "es-workers")
APP = "bench.cluster_app:store"
WRITERS = 3


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def wait(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def delete_prefix(client: Any, prefix: str) -> None:
    for key in list(client.scan_iter(f"{prefix}:*", count=1000)):
        client.delete(key)


# -- C1: writer processes ----------------------------------------------------------------


def writer_child(url: str, prefix: str, appends: int) -> None:
    """Run as a child: waits for "go" on stdin, appends, prints its seconds."""
    store = Store(RedisStorage(redis_client(Settings(redis_url=url)), prefix=prefix),
                  events={"tick": [Tick]})
    streams = [store.open("tick", f"w{os.getpid()}-{e}") for e in range(50)]
    for stream in streams:
        list(stream.all())
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for n in range(appends):
        streams[n % len(streams)].write(Tick(n=n))
    print(time.perf_counter() - started, flush=True)


def writers_rate(url: str, prefix: str, appends: int) -> float:
    """Appends/s of WRITERS processes started together."""
    argv = [sys.executable, __file__, "--writer", url, prefix, str(appends)]
    children = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True) for _ in range(WRITERS)]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    seconds = [float(child.communicate(timeout=300)[0]) for child in children]
    return WRITERS * appends / max(seconds)


# -- C2: P4 with real processes -----------------------------------------------------------


@contextmanager
def deployed(env: dict[str, str], logs: Path) -> Iterator[None]:
    """`es-workers publish` and `es-workers worker` running with `env`."""
    running = []
    for name, argv in (("publisher", [ES_WORKERS, "publish", APP]),
                       ("worker", [ES_WORKERS, "worker", APP, "-p", "1", "-t", "8"])):
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115
        running.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True))
    try:
        yield
    finally:
        for process in running:
            os.killpg(process.pid, signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def latencies(folder: Path) -> list[float]:
    values: list[float] = []
    for path in glob.glob(str(folder / "latency-*.txt")):
        values += [float(line) for line in Path(path).read_text().split()]
    return values


def p4(settings: Settings, seconds: float, rate: float) -> list[float]:
    folder = Path(tempfile.mkdtemp(prefix="es-bench-cluster-"))
    env = dict(os.environ, BENCH_DIR=str(folder), PYTHONPATH=str(ROOT), ES_PREFIX=settings.prefix,
               ES_REDIS_URL=settings.redis_url or "", ES_BROKER_URL=settings.broker_url or "",
               ES_LOG_LEVEL="WARNING")
    store = build(settings)
    heads: dict[str, int] = {}
    try:
        with deployed(env, folder):
            write_tick(store, heads, "warm-up", -1)
            wait(lambda: len(latencies(folder)) >= 1, "the worker to handle a first event")
            total = int(seconds * rate)
            started = time.perf_counter()
            for n in range(total):
                pause = started + n / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                write_tick(store, heads, f"t-{n % 200}", n)
            wait(lambda: len(latencies(folder)) >= total + 1, "every tick handled")
        values = latencies(folder)[1:]
        return values[int(rate):] or values  # the first second warms connections up
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


def write_tick(store: Store, heads: dict[str, int], entity_id: str, n: int) -> None:
    with store.open_from("tick", entity_id, heads.get(entity_id, 0)) as stream:
        list(stream.all())
        stream.write(Tick(n=n))
        heads[entity_id] = stream.position


# -- C3: partitions and the publisher --------------------------------------------------


def publisher_cost(
    cluster: servers.RedisClusterServers, client: Any, partitions: int, entries: int
) -> tuple[float, float, float]:
    """(ms of one idle round, s to drain `entries` outbox entries, commands/s of an idle
    publisher with 3 subscribers) on `partitions`."""
    prefix = f"bench-p{partitions}-{uuid.uuid4().hex[:6]}"
    storage = RedisStorage(client, prefix=prefix, partitions=partitions)
    bus = DramatiqEventBus(StubBroker())
    store = Store(storage, bus=bus, events={"tick": [Tick]})
    for subscriber_id in ("sink", "audit", "mail"):
        store.subscribe("tick", subscriber_id, lambda event: None)
        storage.state.mark_caught_up("tick", subscriber_id)
    # block_ms=0: every round reads every outbox (as rounds do every block_ms)
    full = Publisher(storage, bus, replace(storage.publisher_options, block_ms=0),
                     reader=store.reader)
    publisher = Publisher(storage, bus, storage.publisher_options, reader=store.reader)
    try:
        full.ensure_groups()
        full.step()  # claims and the first sweep, once
        rounds = [timed(full.step) for _ in range(50)]
        for n in range(entries):
            store.open("tick", f"e{n}").write(Tick(n=n))
        started = time.perf_counter()
        while storage.outbox_backlog():
            publisher.step()
        drained = time.perf_counter() - started
        stop = threading.Event()
        idle = threading.Thread(target=publisher.run, args=(stop,))
        idle.start()
        time.sleep(1)  # past the first sweep and claims
        server_usec(cluster)
        time.sleep(5)
        calls = sum(c for c, _ in server_usec(cluster).values()) / 5
        stop.set()
        idle.join()
        return statistics.median(rounds) * 1000, drained, calls
    finally:
        delete_prefix(client, prefix)


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def server_usec(cluster: servers.RedisClusterServers) -> dict[str, tuple[int, int]]:
    """(calls, server microseconds) per command since the last reset, over the masters; then
    resets the counts."""
    totals: dict[str, tuple[int, int]] = {}
    for node in cluster.nodes:
        with node.client() as client:
            for name, stats in client.info("commandstats").items():
                calls, usec = totals.get(name, (0, 0))
                totals[name] = (calls + int(stats["calls"]), usec + int(stats["usec"]))
            client.config_resetstat()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--appends", type=int, default=3000, help="C1 appends per writer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="C2 duration")
    parser.add_argument("--rate", type=float, default=200.0, help="C2 appends per second")
    parser.add_argument("--port-base", type=int, default=8650)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="es-bench-cluster-"))
    cluster = servers.RedisClusterServers(folder, [args.port_base + i for i in range(3)])
    single = redis.Redis.from_url(args.redis_url)
    prefix = f"bench-cluster-{uuid.uuid4().hex[:8]}"
    with servers.running(*cluster.nodes), servers.rabbitmq_vhost() as amqp:
        cluster.start()
        cluster_url = cluster.urls[0]
        on_cluster = cluster.client()
        try:
            server_usec(cluster)
            c1 = {"single": [], "cluster": []}  # type: dict[str, list[float]]
            for _ in range(args.rounds):
                c1["single"].append(writers_rate(args.redis_url, prefix, args.appends))
                c1["cluster"].append(writers_rate(cluster_url, prefix, args.appends))
            calls, usec = server_usec(cluster)["cmdstat_evalsha"]
            c3 = {p: publisher_cost(cluster, on_cluster, p, 5000) for p in (16, 64)}
            latency = {}
            for name, redis_url, broker_url in (
                ("one Redis + Redis broker", args.redis_url, None),
                ("one Redis + RabbitMQ", args.redis_url, amqp),
                ("cluster + Redis broker", cluster_url, args.redis_url),
            ):
                latency[name] = p4(
                    Settings(redis_url=redis_url, broker_url=broker_url,
                             prefix=f"{prefix}-p4-{len(latency)}"),
                    args.seconds, args.rate,
                )
            server_usec(cluster)
            latency["cluster + RabbitMQ"] = p4(
                Settings(redis_url=cluster_url, broker_url=amqp, prefix=f"{prefix}-p4"),
                args.seconds, args.rate,
            )
            delivered = server_usec(cluster)
        finally:
            delete_prefix(single, prefix)
            for suffix in ("-p4", "-p4-0", "-p4-1", "-p4-2"):
                delete_prefix(single, prefix + suffix)
            on_cluster.close()
    report(args, c1, usec / max(calls, 1), delivered, c3, latency)
    shutil.rmtree(folder, ignore_errors=True)


def report(args: argparse.Namespace, c1: dict[str, list[float]], usec: float,
           delivered: dict[str, tuple[int, int]], c3: dict[int, tuple[float, float, float]],
           latency: dict[str, list[float]]) -> None:
    best_single, best_cluster = max(c1["single"]), max(c1["cluster"])
    ratio = best_cluster / best_single
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; cluster of 3 "
          f"masters on this host; {args.redis_url} for one Redis")
    print(f"C1 {WRITERS} writer processes x {args.appends} single-event appends, best of "
          f"{args.rounds}: cluster {best_cluster:,.0f}/s / one Redis {best_single:,.0f}/s = "
          f"{ratio:.2f} (goal >= 0.8: {'PASS' if ratio >= 0.8 else 'MISS'})")
    print(f"   server time per append script on the masters: {usec:.1f} us "
          f"(~{1e6 / usec:,.0f} single-event appends/s per master if the server did "
          "nothing else)")
    events = args.seconds * args.rate + 1
    per_event = sum(u for _, u in delivered.values()) / events
    print(f"   per event end to end during C2 on the cluster (append, publisher, 1 subscriber, "
          f"idle rounds included): {per_event:.1f} us of server time; commands per event:")
    top = sorted(delivered.items(), key=lambda item: -item[1][0])[:8]
    print("     " + ", ".join(f"{name.removeprefix('cmdstat_')} {calls / events:.2f} "
                              f"({usec / max(calls, 1):.0f} us)" for name, (calls, usec) in top))
    for name, values in latency.items():
        print(f"C2 P4 {name}: p50 {percentile(values, 0.5) * 1000:.1f} ms, p99 "
              f"{percentile(values, 0.99) * 1000:.1f} ms ({len(values)} events at "
              f"{args.rate:.0f}/s)")
    for partitions, (idle_ms, drain_s, calls) in c3.items():
        print(f"C3 {partitions} partitions on the cluster: a round over every outbox "
              f"{idle_ms:.2f} ms; 5,000 outbox entries relayed in {drain_s:.2f} s; an idle "
              f"publisher with 3 subscribers sends {calls:,.0f} commands/s")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--writer":
        writer_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
