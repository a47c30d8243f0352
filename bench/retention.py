"""What retention buys and costs (issue 21), on a redis-server of its own.

    python bench/retention.py [--entities 10000] [--events 1000000] [--max-count 100]
        [--rate 5000] [--seconds 20] [--long 100000] [--n 3000] [--rounds 5]
        [--redis-url URL] [--only memory|hydrate|p1]

Figures, each against a baseline measured in the same run:

Memory  `--events` events written 10 per write round-robin over `--entities` entities of a
        type with `Retention(max_count=--max-count)`, the scavenger run as they are written
        (every `--entities` writes) and once at the end: Redis `used_memory` growth, against
        the growth of writing exactly `--max-count` events per entity of another prefix.
        Goal: within 10%. Both logs trimmed to their last write and both outboxes emptied
        (what a publisher does), so the entity streams, heads, indexes and truncations
        are what is compared.
Keeps up  a writer process appends `--rate` events/s (10 per write) for `--seconds` over the
        same entities while this process runs the scavenger in a loop: the writer's actual
        rate, the events stored beyond the limit halfway and at the end (flat or falling:
        the scavenger keeps up), and the scavenger's removal rate.
Hydrate an entity of `--long` events from a snapshot after event `--long - 100` plus the
        100 events after it (`load_snapshot`, `open_from`, read) vs hydrating a 100-event
        entity. Goal: <= 2x.
P1      single-event appends/s on a Store with a Retention for the type (and an entity
        truncated) / the same without, interleaved over `--rounds` rounds: best of each, and
        the median of the rounds' ratios. Goal: >= 0.95. A control (a second store without
        retention / the first) shows what the machine's noise alone gives.

Without `--redis-url` it starts its own redis-server (no persistence) on a free port and
stops it at the end; with one, it writes under key prefixes of its own there and deletes
them at the end (then `used_memory` also moves with what other clients do).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import servers  # noqa: E402
from servers import RedisServer, running  # noqa: E402

from es_workers import Content, RedisStorage, Retention, Store  # noqa: E402

ENTITY = "session"
BENCH_OFFSET = 91  # in the claimed port range, past tests/servers.py's and the side-by-side's
NOTE = 176  # characters: the JSON of an event is ~200 bytes


class Seen(Content):
    number: int
    note: str


class Count(BaseModel):
    seen: int = 0


def seen(number: int) -> Seen:
    return Seen(number=number, note="x" * NOTE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--max-count", type=int, default=100)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--long", type=int, default=100_000)
    parser.add_argument("--n", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--only", choices=["memory", "hydrate", "p1"], default=None,
                        help="run one part (memory includes keeping up)")
    options = parser.parse_args()
    with redis_server(options.redis_url) as url:
        client = redis.Redis.from_url(url)
        prefixes: list[str] = []
        try:
            run(options, url, client, prefixes)
        finally:
            for prefix in prefixes:  # only what this run wrote
                keys = list(client.scan_iter(f"{prefix}:*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start:start + 500])


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """`url`, or a redis-server of our own while the block runs."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer("retention", servers.port_base() + BENCH_OFFSET, Path(directory),
                             [])
        with running(server):
            server.start()
            yield server.url


def run(options: argparse.Namespace, url: str, client: redis.Redis,
        prefixes: list[str]) -> None:
    print(f"redis {client.info('server')['redis_version']} at {url}; "
          f"load {os.getloadavg()[0]:.2f}; {options}")
    tag = uuid.uuid4().hex[:8]
    kept_prefix, base_prefix = f"ret-{tag}", f"base-{tag}"
    prefixes += [kept_prefix, base_prefix]
    limits = {ENTITY: Retention(max_count=options.max_count)}
    if options.only in (None, "memory"):
        memory(options, url, client, prefixes, limits, base_prefix, kept_prefix)
    if options.only in (None, "hydrate"):
        hydrate(options, client, prefixes, tag)
    if options.only in (None, "p1"):
        p1(options, client, prefixes, tag, limits)


def memory(options: argparse.Namespace, url: str, client: redis.Redis, prefixes: list[str],
           limits: dict[str, Retention], base_prefix: str, kept_prefix: str) -> None:
    base = store_on(client, base_prefix)
    before = used(client)
    fill(base, options.entities, options.max_count, scavenge_every=0)
    settle(base)
    per_100 = used(client) - before

    kept = store_on(client, kept_prefix, limits)
    before = used(client)
    started = time.perf_counter()
    removed = fill(kept, options.entities, options.events // options.entities,
                   scavenge_every=options.entities)
    removed += kept.scavenge().events
    took = time.perf_counter() - started
    settle(kept)
    retained = used(client) - before
    print(f"Memory: {options.events:,} events over {options.entities:,} entities "
          f"(max_count={options.max_count}) written and scavenged in {took:.1f} s "
          f"({removed:,} removed): used_memory +{retained / 2**20:.1f} MiB vs "
          f"+{per_100 / 2**20:.1f} MiB for {options.max_count} events per entity: "
          f"ratio {retained / per_100:.3f} (goal <= 1.10)")

    keeps_up(options, url, kept_prefix, kept, limits)


def store_on(client: redis.Redis, prefix: str,
             retention: dict[str, Retention] | None = None) -> Store:
    return Store(RedisStorage(client, prefix=prefix), events={ENTITY: [Seen]},
                 retention=retention)


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def fill(store: Store, entities: int, per_entity: int, scavenge_every: int) -> int:
    """Writes `per_entity` events to each entity, 10 per write round-robin, scavenging
    every `scavenge_every` writes (0: never); returns the events scavenged."""
    removed = writes = 0
    streams = [store.open(ENTITY, f"s{n}") for n in range(entities)]
    for first in range(0, per_entity, 10):
        batch = [seen(first + i) for i in range(min(10, per_entity - first))]
        for stream in streams:
            stream.write(*batch)
            writes += 1
            if scavenge_every and writes % scavenge_every == 0:
                removed += store.scavenge().events
    return removed


def settle(store: Store) -> None:
    """What a running app would have done: the outbox relayed, the log trimmed."""
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    for partition in range(storage.partitions):
        storage.client.xtrim(storage.keys.outbox(partition), maxlen=0)
    storage.trim_logs(keep=1)


def keeps_up(options: argparse.Namespace, url: str, prefix: str, store: Store,
             limits: dict[str, Retention]) -> None:
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=write_at_rate, args=(
        url, prefix, options.entities, options.rate, options.seconds))
    storage = store.storage
    assert isinstance(storage, RedisStorage)
    limit = options.entities * options.max_count

    def excess() -> int:
        return stored_events(storage) - limit

    writer.start()
    while excess() <= 0 and writer.is_alive():  # the writer process starting up
        time.sleep(0.05)
    started = time.perf_counter()
    removed, after_pass = 0, []
    while writer.is_alive():
        removed += store.scavenge().events
        after_pass.append(excess())  # stored beyond the limit right after each pass
    writer.join()
    took = time.perf_counter() - started
    half = len(after_pass) // 2
    first, second = max(after_pass[:half] or [0]), max(after_pass[half:] or [0])
    verdict = "not growing: it keeps up" if second <= 1.2 * first + 100 else \
        "growing: it falls behind"
    print(f"Keeps up: {len(after_pass)} scavenger passes over {took:.1f} s of writing removed "
          f"{removed:,} events ({removed / took:,.0f}/s); stored beyond the limit after a "
          f"pass: at most {first:,} in the first half, {second:,} in the second ({verdict}), "
          f"{after_pass[-1] if after_pass else 0:,} after the last")


def write_at_rate(url: str, prefix: str, entities: int, rate: int, seconds: float) -> None:
    client = redis.Redis.from_url(url)
    storage = RedisStorage(client, prefix=prefix)
    store = Store(storage, events={ENTITY: [Seen]})
    streams = {}
    writes_per_s = rate / 10
    started = time.perf_counter()
    done = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * writes_per_s)
        while done < due:
            entity_id = f"s{done % entities}"
            stream = streams.get(entity_id)
            if stream is None:
                stream = streams[entity_id] = store.open_from(
                    ENTITY, entity_id, storage.position(ENTITY, entity_id))
                stream.all().feed(lambda event: None)
            stream.write(*(seen(i) for i in range(10)))
            done += 1
        time.sleep(0.001)
    took = time.perf_counter() - started
    print(f"  writer: {done * 10:,} events in {took:.1f} s = {done * 10 / took:,.0f}/s")


def stored_events(storage: RedisStorage) -> int:
    total = 0
    for partition in range(storage.partitions):
        ids = [k.decode() for k in storage.client.hkeys(storage.keys.heads(ENTITY, partition))]
        pipe = storage.client.pipeline(transaction=False)
        for entity_id in ids:
            pipe.xlen(storage.keys.stream(ENTITY, entity_id))
        total += sum(pipe.execute())
    return total


def hydrate(options: argparse.Namespace, client: redis.Redis, prefixes: list[str],
            tag: str) -> None:
    prefix = f"hyd-{tag}"
    prefixes.append(prefix)
    store = store_on(client, prefix)
    with store.open(ENTITY, "long") as stream:
        for first in range(0, options.long, 1000):
            stream.write(*(seen(first + i) for i in range(1000)))
    snapshot_at = options.long - 100
    store.save_snapshot(ENTITY, "long", Count(seen=snapshot_at), event_number=snapshot_at)
    with store.open(ENTITY, "short") as stream:
        stream.write(*(seen(i) for i in range(100)))

    def from_snapshot() -> None:
        snapshot = store.load_snapshot(ENTITY, "long", Count)
        assert snapshot is not None
        state = snapshot.state.seen
        with store.open_from(ENTITY, "long", snapshot.event_number) as reading:
            for _ in reading.all():
                state += 1
        assert state == options.long

    def short() -> None:
        with store.open(ENTITY, "short") as reading:
            assert sum(1 for _ in reading.all()) == 100

    best = {name: best_time(measure, options.rounds * 20)
            for name, measure in (("snapshot", from_snapshot), ("short", short))}
    print(f"Hydrate: {options.long:,}-event entity from a snapshot + 100 events "
          f"{best['snapshot'] * 1e3:.3f} ms vs a 100-event entity {best['short'] * 1e3:.3f} ms:"
          f" ratio {best['snapshot'] / best['short']:.2f} (goal <= 2)")


def best_time(run: Callable[[], None], times: int) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def p1(options: argparse.Namespace, client: redis.Redis, prefixes: list[str], tag: str,
       limits: dict[str, Retention]) -> None:
    """P1 with retention / without; and, as a control of the machine's noise, a second
    store without retention / the first (the same code: any distance from 1 is noise)."""
    names = {"plain": f"p1-{tag}", "retention": f"p1r-{tag}", "control": f"p1c-{tag}"}
    prefixes += list(names.values())
    stores = {name: store_on(client, prefix, limits if name == "retention" else None)
              for name, prefix in names.items()}
    with stores["retention"].open(ENTITY, "truncated") as stream:  # a truncation recorded
        stream.write(*(seen(i) for i in range(10)))
    stores["retention"].truncate_before(ENTITY, "truncated", 5)
    best = dict.fromkeys(stores, 0.0)
    ratios: dict[str, list[float]] = {"retention": [], "control": []}
    for round_ in range(options.rounds):
        rates = {}
        order = list(stores.items())
        for name, store in order[round_ % 3:] + order[:round_ % 3]:  # each one first in turn
            stream = store.open(ENTITY, f"p1-{round_}")
            gc.collect()
            started = time.perf_counter()
            for i in range(options.n):
                stream.write(seen(i))
            rates[name] = options.n / (time.perf_counter() - started)
            best[name] = max(best[name], rates[name])
        for name in ratios:
            ratios[name].append(rates[name] / rates["plain"])
    print(f"P1: single appends/s with retention {best['retention']:,.0f} vs without "
          f"{best['plain']:,.0f} (best of {options.rounds}): ratio "
          f"{best['retention'] / best['plain']:.3f}; median of the rounds' ratios "
          f"{statistics.median(ratios['retention']):.3f} (goal >= 0.95). Control, a second "
          f"store without retention / the first: best-of {best['control'] / best['plain']:.3f},"
          f" median {statistics.median(ratios['control']):.3f} (the noise)")


if __name__ == "__main__":
    main()
