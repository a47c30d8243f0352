"""What a client's own work between requests costs its round trips on this machine.

    python bench/wakeup.py [--redis-url URL] [--n 2000]

Sends a trivial `EVALSHA` (`return 1`) in a loop, after spinning the client's CPU for a
given time before each call (as a caller's own Python work would), and prints the median
round trip per gap, and its ratio to the round trip with no gap.

On a virtual machine the server's CPU may be taken from it when it idles longer than the
host polls for (KVM halt polling): waking it then costs far more than the request. On
this machine the penalty comes and goes: one run measured ~100 us up to an 80 us gap and
~500 us at 300 us, another ~490 us from 80 us on, later ones 1.4-1.8x at 300 us. A P1 ratio
(bench/append.py) whose appends do ~45 us of Python work between round trips pays it when
the raw XADD baseline (a few us of work) does not. Where the server's CPU does not sleep
that way, the round trip should not depend on the gap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import redis

GAPS_US = (0, 20, 50, 80, 150, 300)


def round_trip_us(client: redis.Redis, sha: str, gap_us: int, n: int) -> float:
    """Median µs of `n` EVALSHA calls, each after spinning for `gap_us` µs."""
    took = []
    for _ in range(n):
        until = time.perf_counter() + gap_us / 1e6
        while time.perf_counter() < until:
            pass
        start = time.perf_counter()
        client.evalsha(sha, 0)
        took.append(time.perf_counter() - start)
    return statistics.median(took) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("ES_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--n", type=int, default=2000, help="calls per gap")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    sha = str(client.script_load("return 1"))
    print(f"EVALSHA 'return 1' at {args.redis_url}, median of {args.n} calls per gap")
    print(f"{'client work before each call':>30}  {'round trip':>10}  {'ratio':>5}")
    base = 0.0
    for gap_us in GAPS_US:
        median = round_trip_us(client, sha, gap_us, args.n)
        base = base or median
        print(f"{gap_us:>27} us  {median:>7.0f} us  {median / base:>5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
