"""Append rates of AsyncStore against the sync Store, on one Redis.

    python bench/async.py [--redis-url URL] [--n 5000] [--tasks 50] [--rounds 5]
    python bench/async.py --concurrency [--processes 2] [--tasks 16] [--seconds 3]
        [--rounds 3] [--redis-url URL]

Figures are ratios to the sync Store in the same run, so they compare across machines:

A1  single-event appends/s of `--tasks` concurrent tasks on one AsyncStore (each task its
    own entity, appending one event per `await stream.write`)
    / single-event appends/s of one thread on a Store.                       Goal >= 1.5
A2  single-event appends/s of one task on an AsyncStore / the same sync rate (information:
    what asyncio costs per call). Shown beside it, to say where that cost goes: raw XADD/s
    from one task on redis.asyncio / raw sequential XADD/s on redis-py, and the async
    append script called directly (no Stream, no Event) / raw async XADD.

Rates are the best of --rounds rounds, which interleave the measures. The bench writes under
a key prefix of its own and deletes its keys at the end; it touches no other key.

`--concurrency` (issue 25: goal >= 0.8) measures instead, on a redis-server of the bench's own
(tests/servers.py; Redis' default persistence: RDB snapshots, no AOF) unless --redis-url:

C1  single-event appends/s of --processes processes x --tasks asyncio tasks, each task its own
    entity doing `await stream.write(e)` on an AsyncStore
    / appends/s of the same processes sending the append script alone: EVALSHA with its
    KEYS/ARGV packed before the run, pipelined 100 at a time, each process its own entities
    (what the server can do with the script, its clients costing almost nothing).
Each side runs --seconds per round, all processes together; rounds alternate the sides and
each figure is the best of --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hiredis
import redis
import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import servers  # noqa: E402  (tests/servers.py)
from servers import RedisServer, running  # noqa: E402

from es_workers import (  # noqa: E402
    AsyncRedisStorage,
    AsyncStore,
    Content,
    Event,
    RedisStorage,
    Store,
)
from es_workers.redis.entries import append_args  # noqa: E402
from es_workers.redis.scripts import source  # noqa: E402

ENTITY = "account"
NOTE = 176  # characters: the JSON of an event is ~200 bytes


class Deposited(Content):
    amount: int
    note: str


def deposit(number: int) -> Deposited:
    return Deposited(amount=number, note=f"{number:08d}".ljust(NOTE, "x"))


FIELDS = {"n": "Deposited", "d": deposit(0).model_dump_json(), "t": "1700000000000000",
          "e": "0190a0b0-0000-7000-8000-000000000000"}


class Bench:
    def __init__(self, url: str, prefix: str, n: int, tasks: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.aclient = redis.asyncio.Redis.from_url(url)
        self.prefix, self.n, self.tasks = prefix, n, tasks
        self.store = Store(RedisStorage(self.client, prefix=prefix), events={ENTITY: [Deposited]})
        self.astorage = AsyncRedisStorage(self.aclient, prefix=prefix)
        self.astore = AsyncStore(self.astorage, events={ENTITY: [Deposited]})
        self.contents = [deposit(i) for i in range(n)]

    def entity(self) -> str:
        return f"e-{uuid.uuid4().hex[:12]}"

    def sync_writes(self) -> float:
        stream = self.store.open(ENTITY, self.entity())
        started = time.perf_counter()
        for content in self.contents:
            stream.write(content)
        return self.n / (time.perf_counter() - started)

    async def async_writes(self, tasks: int) -> float:
        """Appends/s of `tasks` tasks writing n events in all, each to its own entity."""
        share = self.n // tasks

        async def task(offset: int) -> None:
            stream = self.astore.open(ENTITY, self.entity())
            for content in self.contents[offset : offset + share]:
                await stream.write(content)

        started = time.perf_counter()
        await asyncio.gather(*(task(i * share) for i in range(tasks)))
        return share * tasks / (time.perf_counter() - started)

    def raw_xadd(self) -> float:
        key = f"{self.prefix}:raw-xadd"
        started = time.perf_counter()
        for _ in range(self.n):
            self.client.xadd(key, FIELDS)  # type: ignore[arg-type]
        return self.n / (time.perf_counter() - started)

    async def raw_async_xadd(self) -> float:
        key = f"{self.prefix}:raw-xadd"
        started = time.perf_counter()
        for _ in range(self.n):
            await self.aclient.xadd(key, FIELDS)  # type: ignore[arg-type]
        return self.n / (time.perf_counter() - started)

    async def async_script(self) -> float:
        """The append script awaited directly with prepared KEYS/ARGV: what is left of an
        append once Stream, Event and encoding are taken away."""
        entity_id = self.entity()
        keys = (await self.astorage.open()).append_keys(ENTITY, entity_id)
        script = self.astorage.append_script
        # The ARGV of one event, as the store builds it; then only the expected position
        # (ARGV[3]) and the store_event_id (ARGV[8]) change from call to call.
        event = Event(entity_id, ENTITY, 1, datetime.now(UTC), deposit(0), "id-0", "")
        template = append_args(self.astorage.registry, ENTITY, [event])
        started = time.perf_counter()
        for number in range(self.n):
            args = list(template)
            args[2], args[7] = number, f"id-{number}"
            await script(keys=keys, args=args)
        return self.n / (time.perf_counter() - started)


def best(measures: list[float]) -> float:
    return max(measures)


def run_rounds(bench: Bench, rounds: int) -> dict[str, float]:
    loop = asyncio.new_event_loop()
    run: Callable[[Awaitable[float]], float] = loop.run_until_complete
    found: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for name, measure in (
                ("sync", bench.sync_writes),
                ("concurrent", lambda: run(bench.async_writes(bench.tasks))),
                ("single", lambda: run(bench.async_writes(1))),
                ("xadd", bench.raw_xadd),
                ("async xadd", lambda: run(bench.raw_async_xadd())),
                ("async script", lambda: run(bench.async_script())),
            ):
                found.setdefault(name, []).append(measure())
        run(bench.aclient.aclose())
    finally:
        loop.close()
    return {name: best(values) for name, values in found.items()}


# --- C1: appends/s of many writers against the append script alone ------------------------

CONCURRENCY_OFFSET = 92  # in the claimed port range, past the side-by-side's and retention's
PIPELINE = 100


def script_alone(url: str, prefix: str, seconds: float, ready: Any) -> float:
    """Appends/s of one process pipelining the append script with pre-packed arguments."""
    client = redis.Redis.from_url(url)
    storage = RedisStorage(client, prefix=prefix)
    storage.register(ENTITY, Deposited)
    entity_id = f"s-{uuid.uuid4().hex[:12]}"
    keys = storage.keys.append_keys(ENTITY, entity_id)
    event = Event(entity_id, ENTITY, 1, datetime.now(UTC), deposit(0), "", "")
    template = append_args(storage.registry, ENTITY, [event])
    ids = [uuid.uuid4().hex for _ in range(PIPELINE)]
    sha, position = client.script_load(source("append")), 0
    # Packed by hiredis and read from the connection directly: the client's share of each
    # call is a few microseconds, so the server's script time sets the rate.
    connection = client.connection_pool.get_connection()
    ready.wait()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        packed = []
        for index in range(PIPELINE):
            args = list(template)
            args[2], args[7] = position + index, f"{ids[index]}-{position}"
            packed.append(hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args)))
        connection.send_packed_command(packed, check_health=False)
        for _ in range(PIPELINE):
            reply = connection.read_response()
            assert reply[0] == 0, reply  # appended, not a conflict
        position += PIPELINE
    elapsed = time.perf_counter() - started
    client.connection_pool.release(connection)
    client.close()
    return position / elapsed


def tasks_writing(url: str, prefix: str, seconds: float, ready: Any, tasks: int) -> float:
    """Appends/s of one process whose `tasks` tasks each `await stream.write(e)`."""
    async def run() -> float:
        client = redis.asyncio.Redis.from_url(url)
        store = AsyncStore(AsyncRedisStorage(client, prefix=prefix), events={ENTITY: [Deposited]})
        await store.storage.open()  # type: ignore[attr-defined]
        done = [0]
        content = deposit(0)
        stop = [False]

        async def task() -> None:
            stream = store.open(ENTITY, f"t-{uuid.uuid4().hex[:12]}")
            while not stop[0]:
                await stream.write(content)
                done[0] += 1

        ready.wait()
        started = time.perf_counter()
        running = [asyncio.ensure_future(task()) for _ in range(tasks)]
        await asyncio.sleep(seconds)
        stop[0] = True
        await asyncio.gather(*running)
        elapsed = time.perf_counter() - started
        await client.aclose()
        return done[0] / elapsed

    return asyncio.run(run())


def _child(kind: str, url: str, prefix: str, seconds: float, ready: Any, tasks: int,
           rates: Any) -> None:
    found = (script_alone(url, prefix, seconds, ready) if kind == "script"
             else tasks_writing(url, prefix, seconds, ready, tasks))
    rates.put(found)


def processes_rate(kind: str, url: str, prefix: str, options: argparse.Namespace) -> float:
    """The summed appends/s of --processes processes of `kind`, started together."""
    context = multiprocessing.get_context("spawn")
    ready, rates = context.Barrier(options.processes), context.Queue()
    children = [context.Process(target=_child, args=(kind, url, prefix, options.seconds, ready,
                                                      options.tasks, rates))
                for _ in range(options.processes)]
    for child in children:
        child.start()
    found: list[float] = []
    while len(found) < len(children):
        try:
            found.append(rates.get(timeout=0.5))
        except queue.Empty:
            if any(child.exitcode for child in children):
                for child in children:
                    child.terminate()
                raise SystemExit(f"a {kind} process failed") from None
    for child in children:
        child.join()
    return sum(found)


def server_cpu(client: redis.Redis) -> float:
    """The CPU seconds the Redis server has used (user + system, all its threads)."""
    found = client.info("cpu")
    return float(found["used_cpu_user"]) + float(found["used_cpu_sys"])


def concurrency(options: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer("bench-async", servers.port_base() + CONCURRENCY_OFFSET,
                             Path(directory), ["save 3600 1 300 100 60 10000"])  # the default
        with running(server) if options.redis_url is None else contextlib.nullcontext():
            if options.redis_url is None:
                server.start()
            url = options.redis_url or server.url
            prefix = f"bench-async-{uuid.uuid4().hex[:8]}"
            client = redis.Redis.from_url(url)
            print(f"Redis {client.info('server')['redis_version']} at {url} (save "
                  f"{client.config_get('save')['save']!r}, appendonly "
                  f"{client.config_get('appendonly')['appendonly']}); {options.processes} "
                  f"processes x {options.tasks} tasks, {options.seconds} s per side, best of "
                  f"{options.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
            best = {"script": 0.0, "tasks": 0.0}
            try:
                for _ in range(options.rounds):
                    for kind in best:
                        cpu = server_cpu(client)
                        found = processes_rate(kind, url, prefix, options)
                        per_append = (server_cpu(client) - cpu) / (found * options.seconds)
                        best[kind] = max(best[kind], found)
                        print(f"  {kind:7} {found:10,.0f} appends/s; server CPU "
                              f"{per_append * 1e6:.1f} us per append ({1 / found * 1e6:.1f} "
                              "us of wall time)")
            finally:
                for key in client.scan_iter(f"{prefix}:*", count=1000):
                    client.delete(key)
                client.close()
    ratio = best["tasks"] / best["script"]
    print(f"C1 {options.processes} processes x {options.tasks} tasks `await stream.write` / "
          f"append script alone, pipelined: {best['tasks']:,.0f} / {best['script']:,.0f} = "
          f"{ratio:.2f} (goal >= 0.8); load average after {os.getloadavg()[0]:.2f}")
    return 0 if ratio >= 0.8 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--n", type=int, default=5000, help="appends per rate measure")
    parser.add_argument("--tasks", type=int, default=50, help="concurrent tasks for A1")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts")
    parser.add_argument("--concurrency", action="store_true",
                        help="C1: processes x tasks against the append script alone")
    parser.add_argument("--processes", type=int, default=2, help="--concurrency: processes")
    parser.add_argument("--seconds", type=float, default=3.0, help="--concurrency: per side")
    args = parser.parse_args()
    if args.concurrency:
        if args.processes < 1 or args.tasks < 1 or args.seconds <= 0 or args.rounds < 1:
            parser.error("--processes, --tasks, --seconds and --rounds must be positive")
        if not any(arg.startswith("--redis-url") for arg in sys.argv):
            args.redis_url = None  # a server of the bench's own
        return concurrency(args)

    prefix = f"bench-async-{uuid.uuid4().hex[:8]}"
    bench = Bench(args.redis_url, prefix, args.n, args.tasks)
    print(f"Redis {bench.client.info('server')['redis_version']}, redis-py {redis.__version__}"
          f" (hiredis: {redis.utils.HIREDIS_AVAILABLE}), Python {sys.version.split()[0]};"
          f" n={args.n}, {args.tasks} tasks, best of {args.rounds} rounds;"
          f" load average {os.getloadavg()[0]:.2f}")
    try:
        rate = run_rounds(bench, args.rounds)
    finally:
        for key in bench.client.scan_iter(f"{prefix}:*", count=1000):
            bench.client.delete(key)
    a1, a2 = rate["concurrent"] / rate["sync"], rate["single"] / rate["sync"]
    rows = [
        ("Store, 1 thread, appends/s", f"{rate['sync']:,.0f}", "baseline"),
        (f"AsyncStore, {args.tasks} tasks, appends/s", f"{rate['concurrent']:,.0f}", ""),
        ("AsyncStore, 1 task, appends/s", f"{rate['single']:,.0f}", ""),
        (f"A1 {args.tasks} tasks / sync", f"{a1:.2f}", "goal >= 1.5"),
        ("A2 1 task / sync", f"{a2:.2f}", "information"),
        ("  raw XADD/s redis.asyncio / redis-py", f"{rate['async xadd'] / rate['xadd']:.2f}",
         f"{rate['async xadd']:,.0f} / {rate['xadd']:,.0f}"),
        ("  async append script / async XADD", f"{rate['async script'] / rate['async xadd']:.2f}",
         f"{rate['async script']:,.0f} / {rate['async xadd']:,.0f}"),
        ("  AsyncStore 1 task / async script", f"{rate['single'] / rate['async script']:.2f}",
         f"{rate['single']:,.0f} / {rate['async script']:,.0f}"),
    ]
    print()
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>8}  {note}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if a1 >= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
