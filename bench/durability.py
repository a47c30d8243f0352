"""What each durability mode costs: single-event `stream.write` appends/s, as a ratio to the
default (no AOF, no WAIT) measured in the same run on the same servers.

    python bench/durability.py [--n 2000] [--rounds 3] [--port-base 7700]

It starts its own primary and replica (redis-server, tests/servers.py) on --port-base and
--port-base + 1, in a temporary directory, and switches modes with CONFIG SET:

  default           appendonly no, no WAIT
  everysec          appendonly yes, appendfsync everysec
  always            appendonly yes, appendfsync always
  wait 1            appendonly no, WAIT 1 replica after each append
  always + wait 1   appendfsync always on the primary, WAIT 1

Rates are the best of --rounds rounds; the rounds interleave the modes so that a busy
machine slows them alike. Say the load average when quoting a figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from servers import HOST, RedisServer, running, wait_until  # noqa: E402

from es_workers import Content, RedisStorage, Store  # noqa: E402
from es_workers.redis.durability import Durability  # noqa: E402


class Deposited(Content):
    amount: int


Mode = tuple[str, dict[str, str], Durability]
MODES: list[Mode] = [
    ("default", {"appendonly": "no"}, Durability()),
    ("everysec", {"appendonly": "yes", "appendfsync": "everysec"}, Durability()),
    ("always", {"appendonly": "yes", "appendfsync": "always"}, Durability()),
    ("wait 1", {"appendonly": "no"}, Durability(replicas=1, timeout_ms=1000)),
    ("always + wait 1", {"appendonly": "yes", "appendfsync": "always"},
     Durability(replicas=1, timeout_ms=1000)),
]


def appends_per_s(client: redis.Redis, durability: Durability, n: int) -> float:
    prefix = f"bench-durability-{uuid.uuid4().hex[:8]}"
    store = Store(RedisStorage(client, prefix=prefix, durability=durability),
                  events={"account": [Deposited]})
    stream = store.open("account", "a1")
    started = time.perf_counter()
    for number in range(n):
        stream.write(Deposited(amount=number))
    rate = n / (time.perf_counter() - started)
    for key in list(client.scan_iter(f"{prefix}:*", count=1000)):
        client.delete(key)
    return rate


def configure(client: redis.Redis, config: dict[str, str]) -> None:
    for name, value in config.items():
        client.config_set(name, value)
    # Turning AOF on rewrites the file in the background: measure once that is done.
    wait_until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0,
               "the AOF rewrite", 30)
    wait_until(lambda: replica_online(client), "the replica to be online", 60)


def replica_online(client: redis.Redis) -> bool:
    """Whether the replica is connected and streaming (not resynchronising)."""
    replica = client.info("replication").get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=7700)
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="es-bench-durability-"))
    primary = RedisServer("primary", options.port_base, directory / "primary")
    replica = RedisServer("replica", options.port_base + 1, directory / "replica",
                          ["repl-diskless-sync-delay 0"])
    try:
        with running(primary, replica):
            primary.start()
            replica.start("--replicaof", HOST, str(primary.port))
            client = primary.client()
            wait_until(lambda: replica_online(client), "the replica", 30)
            measure(client, options.n, options.rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(client: redis.Redis, n: int, rounds: int) -> None:
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, config, durability in MODES:
            configure(client, config)
            rate = appends_per_s(client, durability, n)
            best[name] = max(best.get(name, 0.0), rate)
    baseline = best["default"]
    load = os.getloadavg()
    print(f"single-event appends/s, best of {rounds} x {n} (load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    for name, _, _ in MODES:
        print(f"  {name:<16} {best[name]:9,.0f}/s   {best[name] / baseline:5.2f} x default")



if __name__ == "__main__":
    main()
