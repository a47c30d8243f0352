"""The operator's day (issue 10): JSON logs with the event's fields, heartbeats and
`es-workers health`, metrics of every process on one port, `status --watch`, and
confirmation on a terminal. In this process where that suffices, with real publisher and
worker processes where it matters.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
import redis
from apps.delivery_kit import Delivery, stub_broker
from conftest import ACCOUNT_EVENTS, REDIS_URL, Opened, delete_prefix, real_redis
from kit import wait_for, write_at_head
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from es_workers import Event, InMemoryStorage, RedisStorage, Store
from es_workers.health import check_health
from es_workers.observability import JsonFormatter, SharedDirectoryCollector
from es_workers.redis.heartbeats import FORGET_AFTER_MS
from es_workers.workers.bus import DramatiqEventBus
from es_workers.workers.delivery import DeliveryOptions

ES_WORKERS = str(Path(sys.executable).parent / "es-workers")

APP_SOURCE = '''
from es_workers import Content, Event, Store


class Opened(Content):
    owner: str


store = Store.from_settings(events={"account": [Opened]})


@store.subscribe("account", "audit")
def audit(event: Event) -> None:
    pass


@store.subscribe("account", "fragile")
def fragile(event: Event) -> None:
    if event.content.owner == "bad":
        raise ValueError("bad owner")
'''


# -- JSON logs ------------------------------------------------------------------------------

def test_a_failed_attempt_logs_one_json_object_with_the_event_fields_and_traceback(
    fast_storage: RedisStorage, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = Delivery(fast_storage, stub_broker(), events=ACCOUNT_EVENTS,
                        options=DeliveryOptions(max_attempts=2, min_backoff_ms=10))

    def failing(event: Event) -> None:
        raise RuntimeError(f"cannot handle {event.entity_id}")

    delivery.store.subscribe("account", "fragile", failing)
    caplog.set_level("WARNING", logger="es_workers.delivery")
    delivery.start_publisher()
    delivery.start_worker()
    try:
        write_at_head(delivery.store, "account", "acc-1", Opened(owner="Ada"))
        wait_for(lambda: len(caplog.records) >= 2, "a retry and a parking logged")
    finally:
        delivery.stop()
    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records[:2]]
    for attempt, line in enumerate(lines, start=1):
        assert line["subscriber_id"] == "fragile"
        assert (line["entity_type"], line["entity_id"], line["event_number"]) == (
            "account", "acc-1", 1
        )
        assert line["attempt"] == attempt
        assert line["pid"] == os.getpid()
        assert line["logger"] == "es_workers.delivery"
        assert "RuntimeError: cannot handle acc-1" in line["traceback"]
        assert set(line) >= {"time", "level", "message"}
    assert [line["level"] for line in lines] == ["WARNING", "ERROR"]


def test_a_record_without_an_event_has_only_the_common_fields() -> None:
    record = logging.LogRecord("es_workers.cli", logging.INFO, __file__, 1, "hello %s",
                               ("you",), None)
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {"time", "level", "logger", "pid", "message"}
    assert line["message"] == "hello you"
    assert line["time"].endswith("+00:00")


def test_the_cli_logs_json_too(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    env.update(ES_LOG_FORMAT="json", ES_REDIS_ULR="redis://127.0.0.1:6379/0")
    result = subprocess.run([ES_WORKERS, "config", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(text) for text in result.stderr.splitlines()]
    assert line["logger"] == "es_workers.settings"
    assert line["message"] == ("environment variable ES_REDIS_ULR is not an es_workers "
                               "setting; did you mean ES_REDIS_URL?")
    assert json.loads(result.stdout)["log_format"] == "json"


def test_a_scrape_skips_the_metrics_file_of_a_process_still_starting(tmp_path: Path) -> None:
    written = MmapedDict(str(tmp_path / "counter_101.db"))
    written.write_value(mmap_key("es_handled_total", "es_handled_total", ["subscriber_id"],
                                 ["audit"], "Handled."), 3.0, 0.0)
    written.close()
    (tmp_path / "counter_102.db").touch()  # created, not yet sized by its process

    registry = CollectorRegistry()
    registry.register(SharedDirectoryCollector(str(tmp_path)))
    metrics = generate_latest(registry).decode()

    assert 'es_handled_total{subscriber_id="audit"} 3.0' in metrics


# -- Heartbeats and health, in this process --------------------------------------------------

def test_health_needs_a_fresh_heartbeat_of_this_host(
    fast_storage: RedisStorage, broker: object
) -> None:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)  # type: ignore[arg-type]
    delivery.store.subscribe("account", "audit", lambda event: None)
    [redis_ok, broker_ok, beats] = check_health(delivery.store)
    assert redis_ok.ok and broker_ok.ok
    assert not beats.ok and "no heartbeat" in beats.detail
    delivery.start_publisher()
    delivery.start_worker()
    try:
        wait_for(lambda: all(c.ok for c in check_health(delivery.store, role="worker")),
                 "the worker's heartbeat")
        wait_for(lambda: all(c.ok for c in check_health(delivery.store, role="publisher")),
                 "the publisher's heartbeat")
        assert not check_health(delivery.store, host="elsewhere")[2].ok
        # A beat written in the very millisecond of the check is 0 s old, not past 0 s.
        checks: list[list[Any]] = []
        wait_for(lambda: not checks.append(check_health(delivery.store, max_age_s=0.0))
                 and not checks[-1][2].ok, "a beat older than 0 s")
        stale = checks[-1]
    finally:
        delivery.stop()
    assert [c.ok for c in stale] == [True, True, False]
    assert "s old" in stale[2].detail
    # A clean stop removes the beats.
    assert "no heartbeat" in check_health(delivery.store)[2].detail


@pytest.mark.parametrize(("port", "answers"), [(5672, True), (1, False)])
def test_health_reaches_a_rabbitmq_broker(fast_storage: RedisStorage, port: int,
                                          answers: bool) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{port}/")
    store = Store(fast_storage, bus=DramatiqEventBus(broker), events=ACCOUNT_EVENTS)
    try:
        broker_check = check_health(store)[1]
    finally:
        broker.close()
    assert broker_check.name == "broker"
    assert broker_check.ok is answers, broker_check.detail
    if not answers:
        assert "AMQPConnectionError" in broker_check.detail


def test_a_beat_long_dead_is_forgotten_by_the_next_beat(storage: RedisStorage) -> None:
    heartbeats = storage.heartbeats
    long_ago = int(time.time() * 1000) - FORGET_AFTER_MS - 1000
    storage.client.hset(heartbeats.key, "worker:gone-host:4242", long_ago)  # a kill -9
    assert [(b.role, b.host, b.pid) for b in heartbeats.read()] == [("worker", "gone-host", 4242)]
    heartbeats.beat("publisher")
    [beat] = heartbeats.read()
    assert (beat.role, beat.host, beat.pid) == ("publisher", socket.gethostname(), os.getpid())
    assert beat.age_s() < 5
    heartbeats.stop("publisher")
    assert heartbeats.read() == []


def test_health_says_when_redis_does_not_answer() -> None:
    import fakeredis

    server = fakeredis.FakeServer(version=(7, 0))
    store = Store(RedisStorage(fakeredis.FakeRedis(server=server), prefix="h"),
                  events=ACCOUNT_EVENTS)
    server.connected = False
    [redis_check, broker_check] = check_health(store)  # heartbeats are in Redis: not read
    assert not redis_check.ok and "ConnectionError" in redis_check.detail
    assert broker_check.ok  # an in-process bus has nothing to reach


# -- Real processes ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def try_scrape(port: int) -> str:
    try:
        return scrape(port)
    except OSError:
        return ""


def series_of(scraped: str) -> set[str]:
    """The metric names of the samples in a scrape (not of HELP and TYPE lines)."""
    names = set()
    for line in scraped.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            for suffix in ("_bucket", "_count", "_sum", "_created"):
                name = name.removesuffix(suffix)
            names.add(name)
    return names


@dataclass
class Deployment:
    app: str
    env: dict[str, str]
    cwd: Path
    client: redis.Redis
    prefix: str

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ES_WORKERS, *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def write(self, entity_id: str, owner: str) -> None:
        store = Store(RedisStorage(self.client, prefix=self.prefix),
                      events={"account": [Opened]})
        write_at_head(store, "account", entity_id, Opened(owner=owner))


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    client = real_redis()
    prefix = f"ops-{uuid.uuid4().hex[:10]}"
    name = f"opsapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    env.update(ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, ES_MAX_ATTEMPTS="2",
               ES_MIN_BACKOFF_MS="10", ES_LOG_FORMAT="json", PYTHONPATH=str(tmp_path),
               ES_METRICS_PORT=str(free_port()), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    yield Deployment(f"{name}:store", env, tmp_path, client, prefix)
    delete_prefix(client, prefix)


def start(deployment: Deployment, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ES_WORKERS, *args, deployment.app], cwd=deployment.cwd, env=deployment.env,
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.process
def test_publisher_and_worker_processes_log_json_share_one_metrics_port_and_beat(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = int(deployment.env["ES_METRICS_PORT"])
    logs = {name: tmp_path / f"{name}.log" for name in ("publisher", "worker")}
    processes = [start(deployment, logs["publisher"], "publish"),
                 start(deployment, logs["worker"], "worker", "--processes", "2",
                       "--threads", "2")]
    try:
        deployment.write("a1", "Ada")
        deployment.write("a2", "bad")
        wait_for(lambda: 'es_parked_total{subscriber_id="fragile"} 1.0' in try_scrape(port),
                 "a2 parked, counted by a worker process", timeout=60)
        metrics = scrape(port)
        assert 'es_published_total{entity_type="account"} 2.0' in metrics  # the publisher
        assert 'es_handled_total{entity_type="account",subscriber_id="audit"} 2.0' in metrics
        wait_for(lambda: deployment.cli("health", deployment.app).returncode == 0,
                 "the processes to beat", timeout=30)
        healthy = deployment.cli("health", deployment.app, "--role", "worker")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "heartbeat: ok: worker" in healthy.stdout
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        codes = [process.wait(timeout=60) for process in processes]
    assert codes == [0, 0], {n: p.read_text(errors="replace") for n, p in logs.items()}
    unhealthy = deployment.cli("health", deployment.app)
    assert unhealthy.returncode == 1
    assert "heartbeat: FAILED: no heartbeat" in unhealthy.stdout

    texts = {name: path.read_text(errors="replace") for name, path in logs.items()}
    stray = {name: [line for line in text.splitlines() if line and not line.startswith("{")]
             for name, text in texts.items()}
    assert stray == {"publisher": [], "worker": []}, "\n".join(
        line for lines in stray.values() for line in lines)
    records = {name: [json.loads(line) for line in text.splitlines() if line]
               for name, text in texts.items()}
    loggers = {r["logger"] for r in records["worker"]}
    assert {"es_workers.cli", "dramatiq.MainProcess", "es_workers.delivery"} <= loggers
    assert len({r["pid"] for r in records["worker"]}) >= 3  # the main and 2 worker processes
    [parked] = [r for r in records["worker"] if "parked" in r["message"]]
    assert (parked["subscriber_id"], parked["entity_id"], parked["event_number"],
            parked["attempt"]) == ("fragile", "a2", 1, 2)
    assert 'raise ValueError("bad owner")' in parked["traceback"]
    assert any("started on" in r["message"] for r in records["publisher"])


@pytest.mark.process
def test_each_role_exports_only_its_own_series_and_the_worker_removes_its_metrics_folder(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Alone in their containers: the publisher serves its own process, `es-workers worker`
    makes a metrics folder for its processes, and removes it when it stops."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    deployment.env.pop("PROMETHEUS_MULTIPROC_DIR")
    deployment.env["TMPDIR"] = str(temp)
    ports = {"publisher": free_port(), "worker": free_port()}
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    processes = []
    for name, args in (("publisher", ["publish"]),
                       ("worker", ["worker", "--processes", "1", "--threads", "2"])):
        deployment.env["ES_METRICS_PORT"] = str(ports[name])
        processes.append(start(deployment, logs[name], *args))
    try:
        deployment.write("a1", "Ada")
        wait_for(lambda: 'es_handled_total{entity_type="account",subscriber_id="audit"} 1.0'
                 in try_scrape(ports["worker"]), "a1 handled", timeout=60)
        wait_for(lambda: 'es_published_total{entity_type="account"} 1.0'
                 in try_scrape(ports["publisher"]), "a1 relayed", timeout=60)
        made = list(temp.glob("es-workers-metrics-*"))
        assert len(made) == 1, made
        worker, publisher = scrape(ports["worker"]), scrape(ports["publisher"])
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        codes = [process.wait(timeout=60) for process in processes]
    assert codes == [0, 0], {n: p.read_text(errors="replace") for n, p in logs.items()}
    publisher_only = {"es_publish_lag_seconds", "es_outbox_backlog", "es_published_total"}
    worker_only = {"es_handled_total", "es_handler_seconds", "es_handler_failures_total",
                   "es_parked_total"}
    assert series_of(worker) & publisher_only == set()  # they were exported as zeros
    assert series_of(publisher) & worker_only == set()
    assert publisher_only <= series_of(publisher)
    assert worker_only <= series_of(worker)
    assert {"es_appends_total", "es_conflicts_total"} <= series_of(worker)  # handlers write
    assert list(temp.glob("es-workers-metrics-*")) == []  # removed by the stopping worker


@pytest.mark.process
def test_a_metrics_port_taken_by_another_program_is_an_error_naming_it(
    deployment: Deployment,
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        deployment.env["ES_METRICS_PORT"] = str(port)
        taken = {"publish": deployment.cli("publish", deployment.app)}
        deployment.env.pop("PROMETHEUS_MULTIPROC_DIR")  # the worker would make one
        taken["worker"] = deployment.cli("worker", deployment.app)
    for command, result in taken.items():
        assert result.returncode == 2, (command, result.stderr)
        assert f"metrics port {port} (ES_METRICS_PORT) is taken by another program" in (
            result.stderr), (command, result.stderr)
        assert "Dramatiq" not in result.stderr  # refused before any worker process started


@pytest.mark.process
def test_status_watch_refreshes_until_interrupted(deployment: Deployment, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [ES_WORKERS, "status", deployment.app, "--watch", "--interval", "0.2"],
        cwd=deployment.cwd, env=deployment.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    seen = ""
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while seen.count("outbox backlog") < 3:
        assert time.monotonic() < deadline, seen
        seen += process.stdout.readline()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert "Traceback" not in process.stderr.read() if process.stderr else True


def answer_on_a_terminal(deployment: Deployment, args: list[str], answer: str) -> tuple[int, str]:
    """Runs es-workers with a pseudo-terminal as stdin, answers its question, returns the
    exit status and everything it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([ES_WORKERS, *args], cwd=deployment.cwd, env=deployment.env,
                               stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    answered = False
    deadline = time.monotonic() + 60
    while process.poll() is None or select.select([leader], [], [], 0)[0]:
        assert time.monotonic() < deadline, output
        if select.select([leader], [], [], 0.1)[0]:
            try:
                output += os.read(leader, 4096)
            except OSError:
                break
        if not answered and b"[y/N]" in output:
            os.write(leader, answer.encode() + b"\n")
            answered = True
    os.close(leader)
    return process.wait(timeout=30), output.decode(errors="replace")


@pytest.mark.process
def test_replay_asks_on_a_terminal_and_does_nothing_unless_told_yes(
    deployment: Deployment,
) -> None:
    deployment.write("a1", "Ada")
    args = ["replay", deployment.app, "audit"]
    code, output = answer_on_a_terminal(deployment, args, "n")
    assert code == 1, output
    assert "Forget the checkpoints and parked entities of 'audit'" in output
    assert "cancelled: nothing changed" in output

    code, output = answer_on_a_terminal(deployment, args, "y")
    assert code == 0, output
    assert "audit: 1 entities sent again" in output


def test_alerting_series_exist_at_zero_from_start_up() -> None:
    """`rate(es_parked_total[5m]) > 0` only fires if the series existed at 0 before the first
    parked entity; likewise conflicts. A Store built with a subscriber exports them at once."""
    from prometheus_client import REGISTRY

    entity_type, subscriber_id = f"t{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
    store = Store(InMemoryStorage(), events={entity_type: [Opened]})
    store.subscribe(entity_type, subscriber_id, lambda event: None)
    scraped = generate_latest(REGISTRY).decode()
    labels = f'entity_type="{entity_type}",subscriber_id="{subscriber_id}"'
    for line in (
        f'es_parked_total{{subscriber_id="{subscriber_id}"}} 0.0',
        f'es_conflicts_total{{entity_type="{entity_type}"}} 0.0',
        f'es_appends_total{{entity_type="{entity_type}"}} 0.0',
        f'es_handler_failures_total{{{labels}}} 0.0',
        f'es_handled_total{{{labels}}} 0.0',
    ):
        assert line in scraped, line
    # Handler time has buckets below 5 ms (most handlers take well under it).
    bucket = f'entity_type="{entity_type}",le="0.0001",subscriber_id="{subscriber_id}"'
    assert f"es_handler_seconds_bucket{{{bucket}}} 0.0" in scraped


# -- The documented alert rules, evaluated by promtool -----------------------------------------

DOCS_METRICS = Path(__file__).parent.parent / "docs" / "operations" / "metrics.md"


def promtool() -> str:
    """promtool (Debian's `prometheus` package; .ci/run installs it). Required where
    ES_REQUIRE_REDIS=1 (CI): missing, the test fails rather than skip."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("ES_REQUIRE_REDIS") == "1":
            pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does it)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def documented_rules(path: Path = DOCS_METRICS) -> str:
    """The alert rules a document gives (its YAML block of `groups:`)."""
    blocks = path.read_text().split("```yaml\n")[1:]
    [rules] = [block.split("```")[0] for block in blocks if block.startswith("groups:")]
    return rules


def parked_value(subscriber_id: str) -> float | None:
    from prometheus_client import REGISTRY

    wanted = f'es_parked_total{{subscriber_id="{subscriber_id}"}} '
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith(wanted):
            return float(line.removeprefix(wanted))
    return None


def test_the_documented_parked_alert_fires_when_an_entity_is_parked(tmp_path: Path) -> None:
    import fakeredis
    from apps.delivery_kit import FAST_PUBLISHER

    tool = promtool()
    assert documented_rules(DOCS_METRICS.parent.parent.parent / "README.md") == (
        documented_rules())  # the README shows the same rules
    (tmp_path / "rules.yml").write_text(documented_rules())
    checked = subprocess.run([tool, "check", "rules", str(tmp_path / "rules.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Park an entity, scraping its subscriber's series before and after, as Prometheus would.
    subscriber_id = f"fragile{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0))),
                           prefix="alert", publisher=FAST_PUBLISHER)
    delivery = Delivery(storage, stub_broker(), events=ACCOUNT_EVENTS,
                        options=DeliveryOptions(max_attempts=1, min_backoff_ms=10))

    def failing(event: Event) -> None:
        raise RuntimeError("bad owner")

    delivery.store.subscribe("account", subscriber_id, failing)
    delivery.start_publisher()
    delivery.start_worker()
    try:
        before = parked_value(subscriber_id)  # exported at 0 as the worker booted
        write_at_head(delivery.store, "account", "acc-1", Opened(owner="bad"))
        wait_for(lambda: parked_value(subscriber_id) == 1.0, "acc-1 parked")
    finally:
        delivery.stop()
    assert before == 0.0
    labels = f'subscriber_id="{subscriber_id}", job="es_workers", instance="worker:9192"'
    (tmp_path / "test.yml").write_text(json.dumps({
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            # Scraped each minute: 0 from start-up, 1 from the parking on.
            "input_series": [{"series": f"es_parked_total{{{labels}}}",
                              "values": f"{before} {before} {before} 1 1 1 1"}],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "EsWorkersEntityParked", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "EsWorkersEntityParked", "exp_alerts": [{
                    "exp_labels": {"severity": "page", "subscriber_id": subscriber_id,
                                   "job": "es_workers", "instance": "worker:9192"},
                    "exp_annotations": {
                        "summary": f"subscriber {subscriber_id} parked an entity",
                        "description": "es-workers status APP lists it; es-workers parked "
                                       "retry|skip repairs it.",
                    },
                }]},
            ],
        }],
    }))
    tested = subprocess.run([tool, "test", "rules", str(tmp_path / "test.yml")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
