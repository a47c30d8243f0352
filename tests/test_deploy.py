"""Deployment: Procfile under honcho on real Redis, `es-workers demo`, docker-compose, README.

The compose file cannot run here (no Docker engine): its services and Redis settings are
checked as data.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml  # type: ignore[import-untyped]
from conftest import REDIS_URL, delete_prefix, real_redis
from kit import wait_for

import es_workers
from es_workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ES_WORKERS = str(BIN / "es-workers")


def env_without_es(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


# -- Files as data -------------------------------------------------------------------------

def test_procfile_runs_publisher_and_worker_of_the_example_with_exec() -> None:
    entries = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {k: v.strip() for k, v in entries.items()} == {
        "publisher": "exec es-workers publish examples.bank:store",
        "worker": "exec es-workers worker examples.bank:store",
    }


def test_compose_runs_durable_redis_and_the_two_processes() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "publisher", "worker", "dashboard"}

    redis_args = services["redis"]["command"]
    options = dict(zip(redis_args[1::2], redis_args[2::2], strict=True))
    assert redis_args[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in ("everysec", "always")
    assert options["--maxmemory-policy"] == "noeviction"
    assert "/data" in services["redis"]["volumes"][0]

    assert services["publisher"]["command"] == "es-workers publish examples.bank:store"
    assert services["worker"]["command"].startswith("es-workers worker examples.bank:store")
    dashboard = services["dashboard"]
    assert dashboard["command"].startswith("es-workers dashboard examples.bank:store")
    assert dashboard["ports"] == ["127.0.0.1:8642:8642"]
    assert dashboard["environment"]["ES_DASHBOARD_TOKEN"].startswith("${ES_DASHBOARD_TOKEN:?")
    for name in ("publisher", "worker"):
        service = services[name]
        assert service["build"] == "."
        assert service["environment"]["ES_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        Settings(**{k[3:].lower(): v for k, v in service["environment"].items()})


def test_dockerfile_installs_the_package_and_the_example() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY examples ", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)


def test_readme_documents_every_setting_and_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`ES_{name.upper()}`" in readme, f"README lacks ES_{name.upper()}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]' && .venv/bin/python -m pytest -q" in ci
    assert "pip install -e '.[test]' && python -m pytest -q" in readme


# -- Real processes ------------------------------------------------------------------------


@pytest.mark.process
def test_demo_runs_end_to_end_on_an_embedded_redis(tmp_path: Path) -> None:
    result = subprocess.run([ES_WORKERS, "demo", "--operations", "60"], cwd=tmp_path,
                            env=env_without_es(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "embedded Redis" in result.stdout
    assert "read models match the events" in result.stdout
    assert "'publisher': 0, 'worker': 0" in result.stdout


@pytest.mark.process
def test_demo_on_real_redis_deletes_its_keys_afterwards(tmp_path: Path) -> None:
    client = real_redis()
    result = subprocess.run([ES_WORKERS, "demo", "--operations", "60"], cwd=tmp_path,
                            env=env_without_es(ES_REDIS_URL=REDIS_URL), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prefix = re.search(r"key\s+prefix\s+'(es-demo-[0-9a-f]+)'", result.stdout)
    assert prefix, result.stdout
    assert "read models match the events" in result.stdout
    assert list(client.scan_iter(f"{prefix.group(1)}:*")) == []


@pytest.fixture
def bank(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, str]]:
    """A fresh copy of examples/bank.py on real Redis under a test prefix."""
    client = real_redis()
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("ES_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("ES_PREFIX", prefix)
    name = f"bank_{prefix.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "bank.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    yield module, prefix
    module.store.close()
    delete_prefix(client, prefix)


@pytest.mark.process
def test_procfile_under_honcho_handles_events_and_stops_cleanly_on_sigterm(
    bank: tuple[ModuleType, str], tmp_path: Path
) -> None:
    module, prefix = bank
    log = open(tmp_path / "honcho.log", "w+b")  # noqa: SIM115
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile"], cwd=ROOT,
        env=env_without_es(ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, ES_LOG_LEVEL="INFO"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        module.open_account("a1", "Ada")
        module.open_account("a2", "Grace")
        module.deposit("a1", 100)
        module.deposit("a2", 10)
        module.withdraw("a2", 5)
        module.transfer("a1", "a2", 30)  # a2 is credited by the `transfers` subscriber
        expected = {"a1": 70, "a2": 35}
        def honcho_runs() -> None:
            assert honcho.poll() is None, "honcho exited early"

        wait_for(lambda: module.balances() == expected, f"balances {expected}", timeout=60,
                 interval=0.05, check=honcho_runs)
        activity = {"Opened": 2, "Deposited": 2, "Withdrawn": 1, "TransferSent": 1,
                    "TransferReceived": 1}
        wait_for(lambda: module.activity() == activity, f"activity {activity}", timeout=10,
                 interval=0.05)
    finally:
        honcho.send_signal(signal.SIGTERM)
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
    assert honcho.returncode == 128 + signal.SIGTERM, output[-3000:]  # honcho's own code
    assert re.search(r"publisher\.1 stopped \(rc=0\)", output), output[-3000:]
    assert re.search(r"worker\.1 stopped \(rc=0\)", output), output[-3000:]
    assert "Traceback" not in output


def free_port_pair() -> int:
    """A port p with p and p + 1 free (publisher and one worker process)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port >= 65_000:
            continue
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no free pair of ports")


def scrape(port: int) -> str:
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.process
def test_publisher_and_plain_dramatiq_workers_serve_metrics_and_stop_on_sigterm(
    bank: tuple[ModuleType, str], tmp_path: Path
) -> None:
    module, prefix = bank
    port = free_port_pair()
    env = env_without_es(ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, ES_METRICS_PORT=str(port))
    app = "examples.bank:store"
    # The workers run under plain `dramatiq APP_MODULE`: the app's broker serves metrics.
    commands = {
        "publisher": [ES_WORKERS, "publish", app],
        "worker": [sys.executable, "-m", "dramatiq", "examples.bank", "-p", "1", "-t", "2"],
    }
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        for name, command in commands.items()
        for log in [open(tmp_path / f"{name}.log", "wb")]  # noqa: SIM115
    ]
    try:
        module.open_account("m1", "Ada")
        module.deposit("m1", 7)
        wait_for(lambda: module.balances() == {"m1": 7}, "m1's balance", interval=0.05)
        assert 'es_published_total{entity_type="account"}' in scrape(port)
        handled = scrape(port + 1)
        assert 'es_handled_total{entity_type="account",subscriber_id="balances"} 2.0' in handled

        status = subprocess.run([ES_WORKERS, "status", app, "--json"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert {s["subscriber_id"] for s in report["subscribers"]} == {
            "balances", "activity", "transfers"
        }
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=30) for process in processes]
    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
    assert codes == [0, 0], logs
    assert "Traceback" not in "".join(logs.values())


def test_pyproject_lists_every_package_of_es_workers() -> None:
    """Packages are listed by hand (examples/ is installed as es_workers.examples): a new
    subpackage missing from the list would be left out of wheels."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "es_workers").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk | {"es_workers.examples"}
    assert setuptools["package-dir"] == {"es_workers.examples": "examples"}


def test_the_package_exports_exactly_what_the_readme_documents() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE):
        documented |= set(re.findall(r"`([A-Za-z]+)`", row))
    assert documented == set(es_workers.__all__)
