"""The es-workers command: through typer's CliRunner, in this process, on the embedded Redis,
and as a real subprocess.

In-process tests write an app module into a temporary directory and run the CLI from there
(the CLI imports APP with the current directory on sys.path). Delivery runs in this
process: a publisher thread and a Dramatiq worker on the app's broker.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import dramatiq
import pytest
import typer
from conftest import REDIS_URL, delete_prefix, real_redis
from kit import wait_for, write_at_head
from typer.testing import CliRunner

from es_workers import Content, Position, admin
from es_workers.cli import SHOW_CONTENT_CHARS, app, cut
from es_workers.redis.publisher import Publisher, PublisherOptions
from es_workers.redis.storage import RedisStorage

ES_WORKERS = str(Path(sys.executable).parent / "es-workers")

APP_SOURCE = '''
from es_workers import Content, Event, Store


class Opened(Content):
    owner: str


class Deposited(Content):
    amount: int


store = Store.from_settings(events={"account": [Opened, Deposited]})
calls = []
broken_reset = False


def clear_audit() -> None:
    if broken_reset:
        raise OSError("read model unreachable")
    calls.clear()


@store.subscribe("account", "audit", reset=clear_audit)
def audit(event: Event) -> None:
    calls.append((event.entity_id, event.event_number))


@store.subscribe("account", "fragile")
def fragile(event: Event) -> None:
    if isinstance(event.content, Deposited) and event.content.amount < 0:
        raise ValueError("negative deposit")


not_a_store = 42
'''

runner = CliRunner()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("ES_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture
def app_module(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """The test app, on the embedded Redis under a prefix of its own."""
    name = f"cliapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    clean_env.setenv("ES_PREFIX", f"t-{uuid.uuid4().hex[:10]}")
    clean_env.setenv("ES_MAX_ATTEMPTS", "1")  # the first failure parks the entity
    clean_env.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.store.close()
    sys.modules.pop(name, None)


def ref(module: ModuleType) -> str:
    return f"{module.__name__}:store"


def write(module: ModuleType, entity_id: str, *contents: Content) -> None:
    write_at_head(module.store, "account", entity_id, *contents)


class Delivery:
    """The app's publisher in a thread and a Dramatiq worker, in this process."""

    def __init__(self, module: ModuleType) -> None:
        store = module.store
        assert isinstance(store.storage, RedisStorage)
        self.stop_publisher = threading.Event()
        publisher = Publisher(
            store.storage, store.bus, PublisherOptions(block_ms=10, sweep_every_ms=100)
        )
        self.publisher = threading.Thread(
            target=publisher.run, args=(self.stop_publisher,), daemon=True
        )
        self.worker = dramatiq.Worker(store.bus.broker, worker_timeout=20, worker_threads=2)

    def __enter__(self) -> Delivery:
        self.worker.start()
        self.publisher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_publisher.set()
        self.publisher.join(timeout=10)
        self.worker.stop()


def subscriber(module: ModuleType, subscriber_id: str) -> admin.SubscriberStatus:
    return next(s for s in admin.status(module.store).subscribers
                if s.subscriber_id == subscriber_id)


# -- Help and errors -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "command",
    [[], ["publish"], ["worker"], ["status"], ["show"], ["replay"], ["rebuild"], ["config"],
     ["demo"],
     ["dashboard"], ["parked"], ["parked", "list"], ["parked", "retry"], ["parked", "skip"],
     ["health"], ["scavenge"]],
    ids=lambda c: " ".join(c) or "es-workers",
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize(
    ("name", "value"),
    [("ES_PARTITIONS", "0"), ("ES_REDIS_URL", "http://127.0.0.1:6379"), ("ES_LOG_LEVEL", "LOUD"),
     ("ES_REDIS_URL", "redis://h:notaport/0"), ("ES_REDIS_URL", "redis://h:6412/abc"),
     ("ES_LOG_FORMAT", "xml")],
)
def test_invalid_setting_exits_2_naming_it_without_a_traceback(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    result = runner.invoke(app, ["status", "examples.bank:store"])
    assert result.exit_code == 2
    assert f"{name}={value!r}" in result.output
    assert "Traceback" not in result.output


def test_a_bad_url_with_a_password_is_one_line_without_the_password(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("ES_REDIS_URL", "redis://u:hunter2@h:notaport/0")
    result = runner.invoke(app, ["status", "examples.bank:store"])
    assert result.exit_code == 2
    assert "hunter2" not in result.output
    assert "ES_REDIS_URL='redis://u:***@h:notaport/0': the port is not valid" in result.output
    assert "Traceback" not in result.output


def test_an_app_that_raises_on_import_shows_its_own_traceback_only(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = f"cliapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text("import json\n\n\ndef broken():\n"
                                         "    return {}['missing']\n\n\nbroken()\n")
    try:
        result = runner.invoke(app, ["status", f"{name}:store"])
    finally:
        sys.modules.pop(name, None)
    assert result.exit_code == 2
    assert f"importing the app module {name!r} failed: KeyError: 'missing'" in result.output
    assert f"{name}.py\", line 8, in <module>" in result.output
    assert "line 5, in broken" in result.output
    for framework in ("typer", "click", "importlib", "es_workers"):
        assert framework not in result.output.replace(name, ""), framework


def test_app_must_name_a_store_in_an_importable_module(app_module: ModuleType) -> None:
    cases = {
        "no_colon": "must be 'module:attribute'",
        "no_such_module_xyz:store": "cannot import 'no_such_module_xyz'",
        f"{app_module.__name__}:missing": "has no attribute 'missing'",
        f"{app_module.__name__}:not_a_store": "is a int, not an es_workers.Store",
    }
    for target, message in cases.items():
        result = runner.invoke(app, ["status", target])
        assert result.exit_code == 2, (target, result.output)
        assert message in result.output
        assert "Traceback" not in result.output


def test_unreachable_redis_is_one_clear_line_and_exit_1(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = f"cliapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    clean_env.setenv("ES_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    try:
        result = runner.invoke(app, ["status", f"{name}:store"])
    finally:
        sys.modules.pop(name, None)
    assert result.exit_code == 1
    assert "Redis 127.0.0.1:1/0 is unavailable" in result.output
    assert "Traceback" not in result.output


def test_publish_and_worker_refuse_an_embedded_redis(app_module: ModuleType) -> None:
    for command in ("publish", "worker"):
        result = runner.invoke(app, [command, ref(app_module)])
        assert result.exit_code == 2
        assert "ES_REDIS_URL is not set" in result.output


@pytest.fixture
def redis_app(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """The test app on the real Redis, under a prefix of its own (deleted afterwards)."""
    client = real_redis()
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    clean_env.setenv("ES_REDIS_URL", REDIS_URL)
    clean_env.setenv("ES_PREFIX", prefix)
    name = f"cliapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    clean_env.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.store.close()
    sys.modules.pop(name, None)
    delete_prefix(client, prefix)


def test_worker_refuses_a_queue_no_subscriber_has_naming_the_known_ones(
    redis_app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_exec(*args: object) -> None:
        raise AssertionError(f"Dramatiq was started: {args}")

    monkeypatch.setattr(os, "execvpe", no_exec)
    for queues in (["--queues", "audit", "fragil"], ["-Q", "fragil"], ["--queues=fragil"]):
        result = runner.invoke(app, ["worker", ref(redis_app), *queues])
        assert result.exit_code == 2, result.output
        assert ("--queues 'fragil': no subscriber of this app has that ID; did you mean "
                "'fragile'? (subscriber IDs: 'audit', 'fragile')") in result.output


ADMIN_COMMANDS = [
    ["status", "--check"], ["status", "--json"], ["show", "account", "a1"], ["health"],
    ["replay", "audit", "--yes"], ["rebuild", "audit", "--yes"],
    ["parked", "list", "audit", "account"],
    ["parked", "retry", "audit", "account", "a1"],
    ["parked", "skip", "audit", "account", "a1", "--yes"], ["scavenge", "--yes"],
]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=" ".join)
def test_admin_commands_refuse_the_empty_embedded_store_unless_told_embedded(
    app_module: ModuleType, clean_env: pytest.MonkeyPatch, command: list[str]
) -> None:
    # A misspelled ES_REDIS_URL leaves the app on the embedded Redis: `status --check` went
    # green there, on a store with nothing in it.
    clean_env.setenv("ES_REDIS_ULR", "redis://127.0.0.1:6379/0")
    words = [w for w in command if not w.startswith("-")]
    at = 2 if words[0] == "parked" else 1
    args = [*command[:at], ref(app_module), *command[at:]]

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    assert "ES_REDIS_URL is not set" in result.output
    assert "ES_REDIS_ULR is set: did you mean ES_REDIS_URL?" in result.output
    assert "--embedded" in result.output
    assert "Traceback" not in result.output


def test_status_runs_on_the_embedded_store_when_told_embedded(app_module: ModuleType) -> None:
    write(app_module, "a1", app_module.Opened(owner="ann"))
    result = runner.invoke(app, ["status", ref(app_module), "--embedded", "--check",
                                 "--max-backlog", "1"])
    assert result.exit_code == 0, result.output
    assert "on the embedded Redis" in result.output


def test_config_prints_the_settings_with_passwords_hidden(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ES_REDIS_URL", "redis://:s3cret@127.0.0.1:6379/0")
    clean_env.setenv("ES_WORKER_THREADS", "3")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["worker_threads"] == 3
    assert shown["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert "s3cret" not in result.output


def test_config_lists_variables_that_are_no_setting(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ES_REDIS_ULR", "redis://127.0.0.1:6379/0")
    clean_env.setenv("ES_NOTHING_LIKE_IT", "1")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "environment variables that are no setting" in result.stdout
    assert "ES_REDIS_ULR (did you mean ES_REDIS_URL?)" in result.stdout
    assert "ES_NOTHING_LIKE_IT" in result.stdout


# -- Inspecting and repairing --------------------------------------------------------------

def test_show_prints_the_events_of_an_entity(app_module: ModuleType) -> None:
    write(app_module, "a1", app_module.Opened(owner="Ada"), app_module.Deposited(amount=5))

    result = runner.invoke(app, ["show", ref(app_module), "--embedded", "account", "a1", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["event_number"], x["event_name"], x["content"]) for x in lines] == [
        (1, "Opened", {"owner": "Ada"}), (2, "Deposited", {"amount": 5})
    ]
    assert all(set(x) == {"event_number", "event_name", "event_time", "store_event_id",
                          "content"} for x in lines)

    table = runner.invoke(app, ["show", ref(app_module), "--embedded", "account", "a1"])
    assert table.exit_code == 0
    assert "Opened" in table.stdout and "Deposited" in table.stdout

    missing = runner.invoke(app, ["show", ref(app_module), "--embedded", "account", "nobody"])
    assert missing.exit_code == 1
    assert "has no events" in missing.output

    unknown = runner.invoke(app, ["show", ref(app_module), "--embedded", "acount", "a1"])
    assert unknown.exit_code == 2
    assert "unknown entity type 'acount': this app has 'account'" in unknown.output


def test_log_prints_the_events_in_log_order_with_their_positions(app_module: ModuleType) -> None:
    write(app_module, "a1", app_module.Opened(owner="Ada"), app_module.Deposited(amount=5))
    write(app_module, "a2", app_module.Opened(owner="Bob"))

    result = runner.invoke(app, ["log", ref(app_module), "--embedded", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((x["entity_id"], x["event_number"], x["event_name"]) for x in lines) == [
        ("a1", 1, "Opened"), ("a1", 2, "Deposited"), ("a2", 1, "Opened")]
    by_event = {(x["entity_id"], x["event_number"]): x["position"] for x in lines}
    first, second = Position.parse(by_event["a1", 1]), Position.parse(by_event["a1", 2])
    assert second == Position(first.partition, first.number + 1)

    after = runner.invoke(app, ["log", ref(app_module), "--embedded", "--json", "--after",
                                str(first)])
    assert after.exit_code == 0, after.output
    assert [json.loads(x)["position"] for x in after.stdout.splitlines()].count(
        str(first)) == 0
    assert len(after.stdout.splitlines()) == 2

    limited = runner.invoke(app, ["log", ref(app_module), "--embedded", "--type", "account",
                                  "--limit", "1"])
    assert limited.exit_code == 0, limited.output
    assert len(limited.stdout.splitlines()) == 1 and "account" in limited.stdout

    followed = runner.invoke(app, ["log", ref(app_module), "--embedded", "--follow",
                                   "--limit", "3"])
    assert followed.exit_code == 0, followed.output
    assert len(followed.stdout.splitlines()) == 3

    bad = runner.invoke(app, ["log", ref(app_module), "--embedded", "--after", "42"])
    assert bad.exit_code == 2 and "not a position" in bad.output
    unknown = runner.invoke(app, ["log", ref(app_module), "--embedded", "--type", "acount"])
    assert unknown.exit_code == 2


def test_show_cuts_a_large_event_short_with_a_note_and_json_prints_it_whole(
    app_module: ModuleType,
) -> None:
    owner = "é" * 500_000  # ~1 MB of JSON: rich took minutes to lay out such a cell
    write(app_module, "big", app_module.Opened(owner=owner))

    started = time.monotonic()
    table = runner.invoke(app, ["show", ref(app_module), "--embedded", "account", "big"])
    assert table.exit_code == 0, table.output
    assert time.monotonic() - started < 10
    assert SHOW_CONTENT_CHARS - 20 < table.stdout.count("é") <= SHOW_CONTENT_CHARS
    assert cut('{"owner":"' + owner + '"}').endswith(
        f"... ({500_012 - SHOW_CONTENT_CHARS:,} more characters: --json prints all)")

    whole = runner.invoke(app, ["show", ref(app_module), "--embedded", "account", "big", "--json"])
    assert whole.exit_code == 0
    assert json.loads(whole.stdout)["content"] == {"owner": owner}


def test_status_json_shows_the_outbox_backlog_and_a_parked_entity(
    app_module: ModuleType,
) -> None:
    write(app_module, "a1", app_module.Opened(owner="Ada"), app_module.Deposited(amount=5))
    write(app_module, "a2", app_module.Opened(owner="Bob"), app_module.Deposited(amount=-1))
    with Delivery(app_module):
        wait_for(lambda: subscriber(app_module, "fragile").parked, "a2 to be parked")
        wait_for(lambda: len(app_module.calls) == 4, "audit to handle 4 events")
    # No publisher runs now: this event stays in the outbox.
    write(app_module, "a1", app_module.Deposited(amount=1))

    result = runner.invoke(app, ["status", ref(app_module), "--embedded", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outbox_backlog"] >= 1
    subscribers = {s["subscriber_id"]: s for s in report["subscribers"]}
    assert set(subscribers) == {"audit", "fragile"}
    [parked] = subscribers["fragile"]["parked"]
    assert (parked["entity_type"], parked["entity_id"], parked["event_number"]) == (
        "account", "a2", 2
    )
    assert parked["error"] == "ValueError: negative deposit"
    assert subscribers["audit"]["parked"] == []
    assert subscribers["audit"]["events_behind"] == 1  # the event not yet relayed

    assert 'raise ValueError("negative deposit")' in parked["traceback"]

    table = runner.invoke(app, ["status", ref(app_module), "--embedded"])
    assert table.exit_code == 0
    assert "outbox backlog" in table.stdout
    assert "ValueError: negative deposit" in table.stdout
    assert 'raise ValueError("negative deposit")' in table.stdout  # the traceback's end


def test_status_check_exits_3_past_a_threshold(app_module: ModuleType) -> None:
    write(app_module, "a2", app_module.Opened(owner="Bob"), app_module.Deposited(amount=-1))
    with Delivery(app_module):
        wait_for(lambda: subscriber(app_module, "fragile").parked, "a2 to be parked")
        wait_for(lambda: len(app_module.calls) == 2, "audit to handle 2 events")
        # The catch-up may have handed a2 out before the publisher relayed its entry.
        wait_for(lambda: app_module.store.storage.outbox_backlog() == 0,
                 "the publisher to relay the outbox")
    write(app_module, "a2", app_module.Deposited(amount=1))  # not relayed: 1 event behind

    parked = runner.invoke(app, ["status", ref(app_module), "--embedded", "--check"])
    assert parked.exit_code == 3
    assert "check failed: fragile on account: 1 parked > 0" in parked.output
    assert "audit" not in parked.stderr  # lag is not checked unless asked

    within = runner.invoke(app, ["status", ref(app_module), "--embedded", "--check",
                                 "--max-parked", "1", "--max-lag", "2"])
    assert within.exit_code == 0, within.output

    lagging = runner.invoke(app, ["status", ref(app_module), "--embedded", "--check",
                                  "--max-parked", "1", "--max-lag", "0", "--json"])
    assert lagging.exit_code == 3
    assert "audit on account: 1 events behind > 0" in lagging.stderr
    assert "outbox backlog" not in lagging.stderr

    backlog = runner.invoke(app, ["status", ref(app_module), "--embedded", "--check",
                                  "--max-parked", "1", "--max-backlog", "0"])
    assert backlog.exit_code == 3
    assert "check failed: outbox backlog 1 > 0" in backlog.output
    assert json.loads(lagging.stdout)["outbox_backlog"] >= 1  # the report is still printed


def test_parked_list_skip_and_retry(app_module: ModuleType) -> None:
    write(app_module, "a2", app_module.Opened(owner="Bob"), app_module.Deposited(amount=-1),
          app_module.Deposited(amount=3))
    target = [ref(app_module), "--embedded", "fragile", "account"]
    with Delivery(app_module):
        wait_for(lambda: subscriber(app_module, "fragile").parked, "a2 to be parked")

        listed = runner.invoke(app, ["parked", "list", *target, "--json"])
        assert listed.exit_code == 0, listed.output
        [item] = json.loads(listed.stdout)
        assert (item["entity_id"], item["event_number"]) == ("a2", 2)
        assert item["error"] == "ValueError: negative deposit"
        assert item["traceback"].startswith("Traceback (most recent call last):")
        assert item["traceback"].rstrip().endswith("ValueError: negative deposit")

        text = runner.invoke(app, ["parked", "list", *target])
        assert text.exit_code == 0, text.output
        assert "at event 2, 1 attempts" in text.stdout
        assert "    Traceback (most recent call last):" in text.stdout
        assert 'in fragile\n' in text.stdout

        for unknown in (["nobody", "account"], ["fragile", "acount"]):
            refused = runner.invoke(app, ["parked", "list", ref(app_module), "--embedded",
                                          *unknown])
            assert refused.exit_code == 2, refused.output
            assert "'audit', 'fragile'" in refused.output or "'account'" in refused.output

        no_terminal = runner.invoke(app, ["parked", "skip", *target, "a2"])
        assert no_terminal.exit_code == 2
        assert "Pass --yes" in no_terminal.output
        assert subscriber(app_module, "fragile").parked, "nothing may change unconfirmed"

        skipped = runner.invoke(app, ["parked", "skip", *target, "a2", "--yes"])
        assert skipped.exit_code == 0, skipped.output
        assert "skipped event 2" in skipped.stdout
        # Event 3 is delivered after the skipped one.
        wait_for(lambda: subscriber(app_module, "fragile").events_behind == 0,
                 "fragile to handle the rest of a2")
        assert not subscriber(app_module, "fragile").parked

        again = runner.invoke(app, ["parked", "retry", *target, "a2"])
        assert again.exit_code == 1
        assert "not parked" in again.output
        assert "Traceback" not in again.output


def test_corrupt_entities_are_parked_with_the_reason_shown_and_stall_nothing_else(
    app_module: ModuleType,
) -> None:
    """An event missing from a stream (a gap) and a stream key of another type: each entity
    is parked for each subscriber with a CorruptEventError that `parked list` and `status`
    show; the events before the gap, the other entities and entities written afterwards are
    delivered."""
    write(app_module, "gap", app_module.Opened(owner="a"), app_module.Deposited(amount=1),
          app_module.Deposited(amount=2))
    write(app_module, "wrong", app_module.Opened(owner="b"))
    write(app_module, "fine", app_module.Opened(owner="c"))
    storage = app_module.store.storage
    storage.client.xdel(storage.keys.stream("account", "gap"), "2-0")
    wrong = storage.keys.stream("account", "wrong")
    storage.client.delete(wrong)
    storage.client.set(wrong, "not a stream")
    with Delivery(app_module):
        wait_for(lambda: all(len(subscriber(app_module, s).parked) == 2
                             for s in ("audit", "fragile")),
                 "gap and wrong to be parked for both subscribers")
        write(app_module, "later", app_module.Opened(owner="d"))
        wait_for(lambda: ("later", 1) in app_module.calls, "an entity written after them")

        listed = runner.invoke(app, ["parked", "list", ref(app_module), "--embedded", "audit",
                                     "account", "--json"])
        status = runner.invoke(app, ["status", ref(app_module), "--embedded"])

    assert listed.exit_code == 0, listed.output
    parked = {item["entity_id"]: item for item in json.loads(listed.stdout)}
    assert parked.keys() == {"gap", "wrong"}
    assert parked["gap"]["event_number"] == 2
    assert parked["gap"]["error"].startswith(
        "CorruptEventError: stream entry 3-0 is out of sequence: event 2 was expected")
    assert parked["wrong"]["event_number"] == 1
    assert parked["wrong"]["error"].startswith(
        "CorruptEventError: the key holds another type than a stream")
    assert status.exit_code == 0, status.output
    shown = " ".join(status.stdout.split())  # as one line, however the terminal wraps it
    assert "'gap' at event 2" in shown and "'wrong' at event 1" in shown
    assert "CorruptEventError: stream entry 3-0 is out of sequence" in shown
    assert sorted(app_module.calls) == [("fine", 1), ("gap", 1), ("later", 1)]


def test_replay_delivers_the_history_again(app_module: ModuleType) -> None:
    for n in range(3):
        write(app_module, f"a{n}", app_module.Opened(owner=f"o{n}"),
              app_module.Deposited(amount=n + 1))
    with Delivery(app_module):
        wait_for(lambda: len(app_module.calls) == 6, "audit to handle 6 events")

        refused = runner.invoke(app, ["replay", ref(app_module), "--embedded", "audit"])
        assert refused.exit_code == 2
        assert "Pass --yes" in refused.output

        result = runner.invoke(app, ["replay", ref(app_module), "--embedded", "audit", "-y"])
        assert result.exit_code == 0, result.output
        assert "3 entities sent again" in result.stdout

        wait_for(lambda: len(app_module.calls) == 12, "audit to handle the history again")
    by_entity: dict[str, list[int]] = {}
    for entity_id, number in app_module.calls:
        by_entity.setdefault(entity_id, []).append(number)
    assert by_entity == {f"a{n}": [1, 2, 1, 2] for n in range(3)}

    unknown = runner.invoke(app, ["replay", ref(app_module), "--embedded", "nobody", "--yes"])
    assert unknown.exit_code == 2
    assert "'nobody' is not registered in this app: known subscribers 'audit', 'fragile'" in (
        unknown.output
    )
    no_type = runner.invoke(app, ["replay", ref(app_module), "--embedded", "audit", "-e",
                                  "nosuchtype", "-y"])
    assert no_type.exit_code == 2
    assert "unknown entity type 'nosuchtype': this app has 'account'" in no_type.output


def test_scavenge_removes_what_a_truncation_allows_once_subscribers_handled_it(
    app_module: ModuleType,
) -> None:
    write(app_module, "a1", app_module.Opened(owner="o"), app_module.Deposited(amount=1),
          app_module.Deposited(amount=2))
    app_module.store.truncate_before("account", "a1", 3)

    refused = runner.invoke(app, ["scavenge", ref(app_module), "--embedded"])
    assert refused.exit_code == 2
    assert "Pass --yes" in refused.output
    waiting = runner.invoke(app, ["scavenge", ref(app_module), "--yes", "--embedded"])
    assert waiting.exit_code == 0, waiting.output
    assert "scavenged 0 events (0 bytes) of 0 entities" in waiting.stdout  # audit is behind

    with Delivery(app_module):
        wait_for(lambda: len(app_module.calls) == 3, "audit to handle 3 events")
    done = runner.invoke(app, ["scavenge", ref(app_module), "--yes", "--embedded"])
    assert done.exit_code == 0, done.output
    assert "scavenged 2 events" in done.stdout and "of 1 entities" in done.stdout
    assert [e.event_number for e in app_module.store.read("account", "a1", 2)] == [3]


def test_rebuild_resets_the_read_model_and_delivers_the_history_again(
    app_module: ModuleType,
) -> None:
    for n in range(3):
        write(app_module, f"a{n}", app_module.Opened(owner=f"o{n}"),
              app_module.Deposited(amount=n + 1))
    with Delivery(app_module):
        wait_for(lambda: len(app_module.calls) == 6, "audit to handle 6 events")

        refused = runner.invoke(app, ["rebuild", ref(app_module), "audit", "--embedded"])
        assert refused.exit_code == 2
        assert "Pass --yes" in refused.output

        result = runner.invoke(app, ["rebuild", ref(app_module), "audit", "--yes", "--embedded"])
        assert result.exit_code == 0, result.output
        assert "audit: rebuilt from 3 entities" in result.stdout

        wait_for(lambda: len(app_module.calls) == 6, "audit to handle the history again")
        assert sorted(app_module.calls) == [(f"a{n}", e) for n in range(3) for e in (1, 2)]

    unknown = runner.invoke(app, ["rebuild", ref(app_module), "nobody", "--yes", "--embedded"])
    assert unknown.exit_code == 2
    assert "'nobody' is not registered in this app: known subscribers 'audit', 'fragile'" in (
        unknown.output
    )
    no_hook = runner.invoke(app, ["rebuild", ref(app_module), "fragile", "--yes", "--embedded"])
    assert no_hook.exit_code == 2
    assert "subscriber 'fragile' has no reset hook, so it cannot be rebuilt" in no_hook.output


def test_status_shows_a_rebuild_that_failed_halfway_until_one_finishes(
    app_module: ModuleType,
) -> None:
    write(app_module, "a1", app_module.Opened(owner="Ada"))
    app_module.broken_reset = True
    failed = runner.invoke(app, ["rebuild", ref(app_module), "audit", "--yes", "--embedded"])
    assert failed.exit_code == 1
    assert "OSError: read model unreachable" in failed.output
    assert "run the rebuild again" in failed.output

    shown = runner.invoke(app, ["status", ref(app_module), "--embedded"])
    assert "rebuild interrupted: audit by " in " ".join(shown.stdout.split())
    as_json = json.loads(
        runner.invoke(app, ["status", ref(app_module), "--json", "--embedded"]).stdout)
    audit = next(s for s in as_json["subscribers"] if s["subscriber_id"] == "audit")
    assert audit["paused"] is False and audit["rebuild"]["stage"] == "reset hook"
    checked = runner.invoke(app, ["status", ref(app_module), "--check", "--embedded"])
    assert checked.exit_code == 3
    assert "audit: rebuild interrupted" in checked.output

    app_module.broken_reset = False
    rebuilt = runner.invoke(app, ["rebuild", ref(app_module), "audit", "-y", "--embedded"])
    assert rebuilt.exit_code == 0
    shown = runner.invoke(app, ["status", ref(app_module), "--check", "--embedded"])
    assert shown.exit_code == 0, shown.output
    assert "rebuild" not in shown.stdout


def test_health_help_gives_the_default_max_age_it_uses() -> None:
    """Written in the help text (the option's default is None, so that --help does not
    import the health module)."""
    from es_workers.health import DEFAULT_MAX_AGE_S

    command = typer.main.get_command(app).commands["health"]  # type: ignore[attr-defined]
    option = next(param for param in command.params if param.name == "max_age")
    assert option.help.endswith(f"[default: six heartbeat intervals, {DEFAULT_MAX_AGE_S:g}]")


# -- As a real process ---------------------------------------------------------------------

def test_console_script_reports_bad_settings_and_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ES_")}
    env["ES_PARTITIONS"] = "0"
    result = subprocess.run([ES_WORKERS, "status", "examples.bank:store"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "ES_PARTITIONS='0'" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_es_workers_runs_the_cli(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "es_workers", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "publish" in result.stdout and "worker" in result.stdout


MODULES_LOADED = """
import sys
from es_workers.cli import main
sys.argv = ["es-workers", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(sorted(name for name in sys.modules if name.partition(".")[0] in {
    "dramatiq", "redis", "pydantic_settings", "prometheus_client"}
    or name.startswith("es_workers.") and name not in {"es_workers.cli", "es_workers.errors",
                                                        "es_workers.position"}))
"""


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["worker", "--help"]],
                         ids=" ".join)
def test_version_and_help_load_neither_redis_dramatiq_settings_nor_the_store(
    tmp_path: Path, argv: list[str]
) -> None:
    """They answer at once (figures in the README): the commands import what they use.
    (Typer itself loads pydantic to parse a command's options.)"""
    result = subprocess.run([sys.executable, "-c", MODULES_LOADED, *argv], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
