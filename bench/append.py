"""Append, hydrate and memory figures of the event store against one Redis.

    python bench/append.py [--redis-url URL] [--n 5000] [--rounds 5] [--entities 200]

Figures are ratios to plain redis-py on the same client in the same run, so they compare
across machines:

P1  single-event `stream.write` appends/s (one Stream, known position, no re-read)
    / raw sequential XADD/s of an entry with the same fields.              Goal >= 0.6
P2  events/s writing 10 events per `stream.write` / single-event appends/s.  Goal >= 5
P6  time to hydrate a 1,000-event entity through `store.project`
    / time of raw XRANGE + pydantic `model_validate_json` of the same entries. Goal <= 1.3
    (issue 14; it was 1.5). Also shown: hydrating a --long entity (100,000 events), read a
    page of 1,000 at a time, with the peak memory Python allocated meanwhile.
P7  Redis bytes per event at 100 events per entity, ~200-byte payloads, written 10 per
    call: the server's `used_memory` growth (every allocation: entity streams, heads,
    entity index), median of 3 runs, once the outbox entries are relayed (the publisher
    deletes them; their cost until then is shown apart).                   Goal <= 300
    Also shown: the sum of MEMORY USAGE over those keys (for streams Redis estimates each
    radix-tree node at ~250 B, well above what it allocates).
Small entities: used_memory per entity of one event (~200-byte payload) at the server's
    stream-node-max-bytes (Redis preallocates a new node of that size; the append script
    stores a new stream at its size).                                      Goal <= 1000
    The same, P7 and a 5,000-event entity's bytes per event are also shown at 512 (set
    with CONFIG SET for that measure, then restored): what small nodes cost long streams.

Log  what the log costs (issue 20; goals: <= 15% of single-append throughput, <= 25% more
    Redis memory per event at 100 events per entity): the same measures on a RedisStorage
    with `log=False`, interleaved with the default one in each round; what one log entry
    costs per event as append.lua writes it (a pointer per write), as a pointer per event
    and as a copy of the event; and reading 1,000 events with `store.read_all` (one partition) vs
    hydrating one 1,000-event entity. `--log-only` runs just this part.

Rates are the best of --rounds rounds, which interleave the measures so that a busy
machine slows them alike. The bench writes under a key prefix of its own in the given
database and deletes those keys at the end; it touches no other key.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from es_workers import Content, Event, RedisStorage, Store

ENTITY = "account"
NOTE = 176  # characters: the JSON of an event is ~200 bytes


class Deposited(Content):
    amount: int
    note: str


def deposit(number: int) -> Deposited:
    return Deposited(amount=number, note=f"{number:08d}".ljust(NOTE, "x"))


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def memory_usage(client: redis.Redis, prefix: str) -> int:
    """MEMORY USAGE summed over every key under the prefix."""
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(size or 0 for size in pipe.execute())


class Bench:
    def __init__(self, client: redis.Redis, prefix: str, n: int, *, log: bool = True) -> None:
        self.client = client
        self.prefix = prefix
        self.n = n
        self.log = log
        self.storage = RedisStorage(client, prefix=prefix, log=log)
        self.store = Store(self.storage, events={ENTITY: [Deposited]})
        self.streams = 0

    def _new_stream_id(self) -> str:
        self.streams += 1
        return f"e-{self.streams}"

    # --- append rates ------------------------------------------------------------------

    def raw_xadd(self) -> float:
        """Sequential XADD/s of entries shaped like the store's (n, d, t, e fields)."""
        key = f"{self.prefix}:raw-xadd"
        fields = {
            "n": "Deposited",
            "d": deposit(0).model_dump_json(),
            "t": "1700000000000000",
            "e": str(uuid.uuid4()),
        }
        xadd = self.client.xadd

        def run() -> None:
            for _ in range(self.n):
                xadd(key, fields)  # type: ignore[arg-type]

        try:
            return self.n / seconds(run)
        finally:
            self.client.delete(key)

    def single_writes(self) -> float:
        """Single-event appends/s through one Stream that knows its position."""
        stream = self.store.open(ENTITY, self._new_stream_id())
        contents = [deposit(i) for i in range(self.n)]

        def run() -> None:
            write = stream.write
            for content in contents:
                write(content)

        return self.n / seconds(run)

    def batch_writes(self, size: int = 10) -> float:
        """Events/s appended `size` per call."""
        stream = self.store.open(ENTITY, self._new_stream_id())
        total = max(size, self.n * 2 // size * size)
        batches = [[deposit(i + j) for j in range(size)] for i in range(0, total, size)]

        def run() -> None:
            write = stream.write
            for batch in batches:
                write(*batch)

        return total / seconds(run)

    # --- hydration ---------------------------------------------------------------------

    def hydrate(self, events: int = 1000, repeat: int = 30) -> tuple[float, float]:
        """Best (library, raw) seconds to read a `events`-event entity, interleaved."""
        entity_id = self._new_stream_id()
        stream = self.store.open(ENTITY, entity_id)
        for number in range(events):  # one event per write, each with its own time
            stream.write(deposit(number))
        key = self.storage.keys.stream(ENTITY, entity_id)
        total = [0]

        def apply(event: Event) -> None:
            total[0] += event.content.amount  # type: ignore[attr-defined]

        def library() -> None:
            self.store.project(ENTITY, entity_id, apply)

        def raw() -> None:
            entries: Any = self.client.xrange(key, "-", "+")
            for _, fields in entries:
                total[0] += Deposited.model_validate_json(fields[b"d"]).amount

        library_times, raw_times = [], []
        for _ in range(repeat):
            library_times.append(seconds(library))
            raw_times.append(seconds(raw))
        return min(library_times), min(raw_times)

    def hydrate_long(self, events: int) -> tuple[float, float, int]:
        """Hydrating one `events`-event entity (written 100 per call): (best seconds of 3
        through store.project, seconds of raw XRANGE + validate in pages of 1,000, peak bytes
        Python allocated while hydrating, by tracemalloc in a separate pass)."""
        entity_id = self._new_stream_id()
        stream = self.store.open(ENTITY, entity_id)
        for start in range(0, events, 100):
            stream.write(*(deposit(n) for n in range(start, min(events, start + 100))))
        key = self.storage.keys.stream(ENTITY, entity_id)
        total = [0]

        def apply(event: Event) -> None:
            total[0] += event.content.amount  # type: ignore[attr-defined]

        def raw() -> None:
            start = "-"
            while True:
                entries: Any = self.client.xrange(key, start, "+", count=1000)
                for _, fields in entries:
                    total[0] += Deposited.model_validate_json(fields[b"d"]).amount
                if len(entries) < 1000:
                    return
                start = "(" + entries[-1][0].decode()

        library = min(seconds(lambda: self.store.project(ENTITY, entity_id, apply))
                      for _ in range(3))
        raw_s = min(seconds(raw) for _ in range(3))
        tracemalloc.start()
        self.store.project(ENTITY, entity_id, apply)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return library, raw_s, peak

    # --- memory ------------------------------------------------------------------------

    def bytes_per_event(self, entities: int, per_entity: int, batch: int) -> tuple[float, ...]:
        """Per event, written under a fresh prefix: (used_memory growth once the outbox is
        relayed, used_memory of the outbox entries, MEMORY USAGE sum of what stays)."""
        prefix = f"{self.prefix}-mem-{uuid.uuid4().hex[:6]}"
        storage = RedisStorage(self.client, prefix=prefix, log=self.log)
        store = Store(storage, events={ENTITY: [Deposited]})
        contents = [deposit(i) for i in range(per_entity)]
        events = entities * per_entity
        try:
            before = self.client.info("memory")["used_memory"]
            for number in range(entities):
                stream = store.open(ENTITY, f"m-{number:06d}")
                for start in range(0, per_entity, batch):
                    stream.write(*contents[start : start + batch])
            written = self.client.info("memory")["used_memory"]
            # The publisher deletes outbox entries once relayed: count what stays.
            self.client.delete(*(storage.keys.outbox(p) for p in range(storage.partitions)))
            relayed = self.client.info("memory")["used_memory"]
            estimate = memory_usage(self.client, prefix) - (
                self.client.memory_usage(storage.keys.meta(), samples=0) or 0
            )
            return (relayed - before) / events, (written - relayed) / events, estimate / events
        finally:
            delete_prefix(self.client, prefix)

    def median_bytes_per_event(self, entities: int, per_entity: int, batch: int) -> list[float]:
        runs = [self.bytes_per_event(entities, per_entity, batch) for _ in range(3)]
        return [statistics.median(figures) for figures in zip(*runs, strict=True)]

    def one_event_entities(self, node_max_bytes: int | None, entities: int = 300) -> float:
        """used_memory growth per entity of a single event."""
        return self.at_node_bytes(node_max_bytes, lambda: self.median_bytes_per_event(
            entities, 1, 1)[0])

    def at_node_bytes(self, node_max_bytes: int | None, measure: Callable[[], float]) -> float:
        """`measure()` with the server's stream-node-max-bytes set to `node_max_bytes` (None:
        as it is), restored after."""
        if node_max_bytes is None:
            return measure()
        setting = "stream-node-max-bytes"
        before = str(self.client.config_get(setting)[setting])
        self.client.config_set(setting, node_max_bytes)
        try:
            return measure()
        finally:
            self.client.config_set(setting, before)


    # --- the log -----------------------------------------------------------------------

    def log_entry_bytes(self, shape: str, events: int = 20_000, per_write: int = 10) -> float:
        """used_memory growth per event of one stream of log entries, 100 events per entity
        written `per_write` at a time: "write" as append.lua writes them (one pointer per
        write: type, entity ID, first event number, count), "event" (a pointer per event)
        or "copy" (per event, the pointer and the event's fields)."""
        key = f"{self.prefix}:log-shape"
        data = deposit(0).model_dump_json()
        step = per_write if shape == "write" else 1
        pipe = self.client.pipeline(transaction=False)
        before = self.client.info("memory")["used_memory"]
        for number in range(step, events + 1, step):
            first = (number - step) % 100 + 1
            fields: dict[str, Any] = {"type": ENTITY, "id": f"m-{(number - 1) // 100:06d}",
                                      "n": first}
            if shape == "write":
                fields["c"] = step
            if shape == "copy":
                fields.update(n_="Deposited", d=data, t="1700000000000000",
                              e=str(uuid.uuid4()))
            pipe.xadd(key, fields, id=f"{number}-0")
            if number % 1000 == 0:
                pipe.execute()
        pipe.execute()
        try:
            return (self.client.info("memory")["used_memory"] - before) / events
        finally:
            self.client.delete(key)

    def read_all_vs_hydrate(self, events: int = 1000, repeat: int = 20) -> tuple[float, float]:
        """Best seconds to read `events` events with read_all (one partition, 10 entities
        of 100, written 10 per call) and to hydrate one entity of as many events."""
        prefix = f"{self.prefix}-log-{uuid.uuid4().hex[:6]}"
        store = Store(RedisStorage(self.client, prefix=prefix, partitions=1),
                      events={ENTITY: [Deposited]})
        contents = [deposit(i) for i in range(100)]
        for number in range(events // 100):
            stream = store.open(ENTITY, f"r-{number}")
            for start in range(0, 100, 10):
                stream.write(*contents[start : start + 10])
        whole = store.open(ENTITY, "whole")
        for start in range(0, events, 100):
            whole.write(*(deposit(i) for i in range(start, start + 100)))
        try:
            log_s = hydrate_s = float("inf")
            for _ in range(repeat):
                log_s = min(log_s, seconds(lambda: sum(1 for _ in store.read_all())))
                hydrate_s = min(hydrate_s, seconds(
                    lambda: store.project(ENTITY, "whole", lambda event: None)))
            return log_s, hydrate_s
        finally:
            delete_prefix(self.client, prefix)


def script_us(client: redis.Redis, bench: Bench) -> float:
    """The server's time per append script over one single_writes run (INFO
    commandstats, reset first: CONFIG RESETSTAT clears every command's figures); NaN where
    the server refuses it."""
    try:
        client.config_resetstat()
        bench.single_writes()
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    except redis.ResponseError:
        return float("nan")
    return float(stats.get("usec_per_call", "nan"))


def log_rows(client: redis.Redis, prefix: str, n: int, rounds: int, entities: int) -> list[Row]:
    """The log's cost: the same measures with and without it, interleaved."""
    with_log, without = Bench(client, prefix, n), Bench(client, f"{prefix}-nolog", n, log=False)
    single_log = single_none = batch_log = batch_none = 0.0
    for _ in range(rounds):
        single_none = max(single_none, without.single_writes())
        single_log = max(single_log, with_log.single_writes())
        batch_none = max(batch_none, without.batch_writes())
        batch_log = max(batch_log, with_log.batch_writes())
    script_none, script_log = script_us(client, without), script_us(client, with_log)
    bytes_log = with_log.median_bytes_per_event(entities, 100, 10)[0]
    bytes_none = without.median_bytes_per_event(entities, 100, 10)[0]
    per_write = with_log.log_entry_bytes("write")
    per_event, copy = with_log.log_entry_bytes("event"), with_log.log_entry_bytes("copy")
    log_s, hydrate_s = with_log.read_all_vs_hydrate()
    throughput = 1 - single_log / single_none
    memory = bytes_log / bytes_none - 1
    return [
        ("single append/s, no log", f"{single_none:,.0f}", "", "RedisStorage(log=False)", None),
        ("single append/s, log", f"{single_log:,.0f}", "", "RedisStorage()", None),
        ("L1 throughput cost", f"{throughput:.1%}", "<= 15%",
         f"1 - {single_log:,.0f} / {single_none:,.0f}", throughput <= 0.15),
        ("server us per append", f"{script_log:.1f}", "",
         f"no log: {script_none:.1f} (INFO commandstats, EVALSHA)", None),
        ("10 per write, events/s", f"{batch_log:,.0f}", "",
         f"no log: {batch_none:,.0f} ({1 - batch_log / batch_none:.1%} less)", None),
        ("bytes/event, no log", f"{bytes_none:.0f}", "", f"{entities} entities x 100", None),
        ("bytes/event, log", f"{bytes_log:.0f}", "", "used_memory, as P7", None),
        ("L2 memory cost", f"{memory:.1%}", "<= 25%", f"{bytes_log:.0f} / {bytes_none:.0f}",
         memory <= 0.25),
        ("log per event, B", f"{per_write:.1f}", "", "a pointer per write of 10 (written)",
         None),
        ("  a pointer per event", f"{per_event:.1f}", "", "type, id, n", None),
        ("  a copy per event", f"{copy:.1f}", "", "the pointer + the event's fields", None),
        ("read_all 1,000 events, ms", f"{log_s * 1e3:.2f}", "",
         f"hydrate 1 entity of 1,000: {hydrate_s * 1e3:.2f} ms ({log_s / hydrate_s:.1f}x)",
         None),
    ]


Row = tuple[str, str, str, str, bool | None]


def table(rows: list[Row]) -> Iterator[str]:
    header: Row = ("figure", "measured", "goal", "from", None)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    for name, value, goal, basis, passed in [header, *rows]:
        verdict = "result" if name == "figure" else {None: "", True: "PASS", False: "MISS"}[passed]
        yield (
            f"{name:<{widths[0]}}  {value:>{widths[1]}}  {goal:<{widths[2]}}  "
            f"{basis:<{widths[3]}}  {verdict}"
        ).rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--n", type=int, default=5000, help="appends per rate measure")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts")
    parser.add_argument("--entities", type=int, default=500, help="entities for P7")
    parser.add_argument("--long", type=int, default=100_000,
                        help="events of the long entity hydrated (0: skip)")
    parser.add_argument("--log-only", action="store_true", help="only the log's cost")
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    info = client.info("server")
    prefix = f"bench-append-{uuid.uuid4().hex[:8]}"
    setting = "stream-node-max-bytes"
    print(
        f"Redis {info['redis_version']} at {args.redis_url}, redis-py {redis.__version__}"
        f" (hiredis: {redis.utils.HIREDIS_AVAILABLE}), Python {sys.version.split()[0]};"
        f" prefix {prefix}; n={args.n}, best of {args.rounds} rounds"
    )
    if args.log_only:
        try:
            rows = log_rows(client, prefix, args.n, args.rounds, args.entities)
        finally:
            for key in client.scan_iter(f"{prefix}*", count=1000):
                client.delete(key)
        print()
        for line in table(rows):
            print(line)
        return 0 if all(row[4] is not False for row in rows) else 1
    try:
        bench = Bench(client, prefix, args.n)
        raw, single, batch = 0.0, 0.0, 0.0
        for _ in range(args.rounds):
            raw = max(raw, bench.raw_xadd())
            single = max(single, bench.single_writes())
            batch = max(batch, bench.batch_writes())
        library_s, raw_s = bench.hydrate()
        long_s, long_raw_s, long_peak = bench.hydrate_long(args.long) if args.long else (
            0.0, 0.0, 0)
        per_event, outbox, estimated = bench.median_bytes_per_event(args.entities, 100, 10)
        node_bytes = int(str(client.config_get(setting)[setting]))
        one_now = bench.one_event_entities(None)
        try:
            one_512: float | None = bench.one_event_entities(512)
            p7_512: float | None = bench.at_node_bytes(
                512, lambda: bench.median_bytes_per_event(args.entities, 100, 10)[0])
            long_now = bench.median_bytes_per_event(2, 5000, 100)[0]
            long_512: float | None = bench.at_node_bytes(
                512, lambda: bench.median_bytes_per_event(2, 5000, 100)[0])
        except redis.ResponseError:  # CONFIG disabled (a managed Redis)
            one_512 = p7_512 = long_512 = None
    finally:
        for key in client.scan_iter(f"{prefix}*", count=1000):  # the -mem-* prefixes too
            client.delete(key)

    p1, p2, p6 = single / raw, batch / single, library_s / raw_s
    rows: list[Row] = [
        ("raw XADD/s", f"{raw:,.0f}", "", "baseline: redis-py, sequential", None),
        ("stream.write, 1 event/s", f"{single:,.0f}", "", "appends/s", None),
        ("stream.write, 10 events/s", f"{batch:,.0f}", "", "events/s", None),
        (
            "P1 single append / XADD",
            f"{p1:.2f}",
            ">= 0.6",
            f"{single:,.0f} / {raw:,.0f}",
            p1 >= 0.6,
        ),
        ("P2 10 per write / single", f"{p2:.2f}", ">= 5", f"{batch:,.0f} / {single:,.0f}", p2 >= 5),
        ("hydrate 1,000 events, ms", f"{library_s * 1e3:.2f}", "", "store.project", None),
        ("XRANGE + validate, ms", f"{raw_s * 1e3:.2f}", "", "baseline: same entries", None),
        (
            "P6 hydrate / raw",
            f"{p6:.2f}",
            "<= 1.3",
            f"{library_s * 1e3:.2f} / {raw_s * 1e3:.2f} ms",
            p6 <= 1.3,
        ),
        *([] if not args.long else [
            (f"hydrate {args.long:,} events, ms", f"{long_s * 1e3:,.0f}", "",
             f"raw XRANGE pages + validate: {long_raw_s * 1e3:,.0f} ms "
             f"({long_s / long_raw_s:.2f}x)", None),
            ("  peak Python memory, KiB", f"{long_peak / 1024:,.0f}", "",
             "tracemalloc while hydrating", None),
        ]),
        (
            "P7 bytes/event, 100/entity",
            f"{per_event:.0f}",
            "<= 300",
            f"used_memory; {args.entities} entities x 100, ~200 B",
            per_event <= 300,
        ),
        ("  same, MEMORY USAGE sum", f"{estimated:.0f}", "", "Redis' estimate", None),
        ("  + outbox until relayed", f"{outbox:.0f}", "", "used_memory, 1 entry/write", None),
        ("bytes/entity, 1 event", f"{one_now:.0f}", "<= 1000",
         f"used_memory; {setting} {node_bytes}", one_now <= 1000),
    ]
    if one_512 is not None and p7_512 is not None and long_512 is not None:
        rows += [
            ("bytes/entity, 1 event", f"{one_512:.0f}", "", f"{setting} 512", None),
            ("P7 at 512", f"{p7_512:.0f}", "", f"{setting} 512: what small nodes cost",
             None),
            ("bytes/event, 5,000/entity", f"{long_now:.0f}", "", f"{setting} {node_bytes}",
             None),
            ("bytes/event, 5,000/entity", f"{long_512:.0f}", "", f"{setting} 512", None),
        ]
    print()
    for line in table(rows):
        print(line)
    passed = p1 >= 0.6 and p2 >= 5 and p6 <= 1.3 and per_event <= 300 and one_now <= 1000
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
