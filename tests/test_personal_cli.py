"""`es-workers keys new|rotate`, `forget` and `show --redact`, and the settings of personal
data, on the embedded Redis (issue 23)."""

from __future__ import annotations

import base64
import importlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from es_workers import ConfigurationError, Store
from es_workers.cli import app
from es_workers.forgetting import FORGOTTEN_TYPE
from es_workers.personal import FORGOTTEN_TEXT, REDACTED_TEXT
from es_workers.settings import Settings, load_settings

APP_SOURCE = '''
from typing import Annotated
from es_workers import Content, Personal, Store


class Registered(Content):
    email: Annotated[str, Personal]
    plan: str


store = Store.from_settings(events={"customer": [Registered]})
'''

runner = CliRunner()


def new_key() -> str:
    result = runner.invoke(app, ["keys", "new"])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()  # its only output line
    assert len(base64.b64decode(line)) == 32
    return line


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("ES_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture
def app_module(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    name = f"piiapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    clean_env.setenv("ES_PREFIX", f"t-{uuid.uuid4().hex[:10]}")
    clean_env.setenv("ES_ENCRYPTION_KEY", new_key())
    clean_env.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.store.close()
    sys.modules.pop(name, None)


def ref(module: ModuleType) -> str:
    return f"{module.__name__}:store"


def register(module: ModuleType, customer: str, email: str) -> None:
    with module.store.open("customer", customer) as stream:
        stream.write(module.Registered(email=email, plan="gold"))


def test_keys_new_prints_a_different_key_each_time() -> None:
    assert new_key() != new_key()


def test_show_decrypts_and_redact_hides_personal_fields(app_module: ModuleType) -> None:
    register(app_module, "c1", "ada@example.org")
    shown = runner.invoke(app, ["show", ref(app_module), "customer", "c1", "--json", "--embedded"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["content"] == {"email": "ada@example.org", "plan": "gold"}
    hidden = runner.invoke(
        app, ["show", ref(app_module), "customer", "c1", "--redact", "--embedded"])
    assert hidden.exit_code == 0, hidden.output
    assert "ada@example.org" not in hidden.stdout and REDACTED_TEXT in hidden.stdout


def test_forget_asks_first_then_forgets(app_module: ModuleType) -> None:
    register(app_module, "c1", "ada@example.org")
    refused = runner.invoke(app, ["forget", ref(app_module), "c1", "--embedded"])  # no terminal
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert not next(iter(app_module.store.open("customer", "c1").all())).forgotten

    done = runner.invoke(app, ["forget", ref(app_module), "c1", "--yes", "--embedded"])
    assert done.exit_code == 0, done.output
    [event] = app_module.store.open("customer", "c1").all()
    assert event.forgotten and event.content.email == FORGOTTEN_TEXT
    again = runner.invoke(app, ["forget", ref(app_module), "c1", "--yes", "--embedded"])
    assert again.exit_code == 0, again.output
    assert len(list(app_module.store.open(FORGOTTEN_TYPE, "c1").all())) == 1


def test_keys_rotate_rewraps_with_the_new_master_key(
    app_module: ModuleType, clean_env: pytest.MonkeyPatch
) -> None:
    register(app_module, "c1", "ada@example.org")
    old = os.environ["ES_ENCRYPTION_KEY"]
    new = new_key()
    clean_env.setenv("ES_ENCRYPTION_KEY", new)
    clean_env.setenv("ES_ENCRYPTION_KEYS", old)
    sys.modules.pop(app_module.__name__)  # the command imports the app with the new keys
    result = runner.invoke(app, ["keys", "rotate", ref(app_module), "--embedded"])
    assert result.exit_code == 0, result.output
    assert "1 data keys re-wrapped" in result.stdout
    rotated = Store.from_settings(events={"customer": [app_module.Registered]})
    assert rotated.rotate_keys() == 0  # done already, by the command
    clean_env.delenv("ES_ENCRYPTION_KEYS")
    only_new = Store.from_settings(events={"customer": [app_module.Registered]})
    assert next(iter(only_new.open("customer", "c1").all())).content.email == (
        "ada@example.org")


def test_master_keys_are_checked_and_never_shown(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ES_ENCRYPTION_KEY", "too-short-secret")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "ES_ENCRYPTION_KEY" in str(raised.value)
    assert "too-short-secret" not in str(raised.value).replace("'too-short-secret'", "")
    key = new_key()
    shown = Settings(encryption_key=key, encryption_keys=new_key()).shown()
    assert shown["encryption_key"] == shown["encryption_keys"] == "***"


def test_the_master_key_may_come_from_a_secrets_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    key = new_key()
    (secrets / "es_encryption_key").write_text(key)
    clean_env.setenv("ES_SECRETS_DIR", str(secrets))
    settings = load_settings()
    assert settings.encryption_key is not None
    assert settings.encryption_key.get_secret_value() == key


def test_the_dashboard_hides_personal_fields(app_module: ModuleType) -> None:
    from es_workers.dashboard.data import event_dict

    register(app_module, "c1", "ada@example.org")
    [event] = app_module.store.open("customer", "c1").all()
    shown = event_dict(event)
    assert shown["content"] == {"email": REDACTED_TEXT, "plan": "gold"}
    assert shown["forgotten"] is False
