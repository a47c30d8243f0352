"""bench/soak.py at its smoke size: real writers, publisher and workers (one killed with
kill -9) on a real Redis; the bench exits 1 if an event is not handled or it does not drain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REDIS_URL, real_redis

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.process


def test_the_soak_bench_smoke_run_handles_every_event(tmp_path: Path) -> None:
    real_redis()  # skips, or fails under ES_REQUIRE_REDIS=1, without a server
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--entities", "60", "--events",
         "180", "--seconds", "60", "--redis-url", REDIS_URL, "--logs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    for subscriber in ("tally", "flaky"):
        assert f"{subscriber}: events not handled" in run.stdout
    assert "FAILED" not in run.stdout
