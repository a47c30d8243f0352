"""Settings: ES_ environment over config/es.toml over defaults, clear errors, from_settings."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from conftest import REDIS_URL, delete_prefix, real_redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from es_workers import ConfigurationError, Content, Event, EventTooLargeError, RedisStorage, Store
from es_workers.settings import (
    Settings,
    example_toml,
    load_settings,
    redact_url,
    unknown_variables,
)
from es_workers.wiring import build_broker
from es_workers.workers.bus import DramatiqEventBus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No ES_ variables, and a current directory without config/es.toml."""
    for name in list(os.environ):
        if name.startswith("ES_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield monkeypatch


class Opened(Content):
    owner: str


def test_defaults_run_on_an_embedded_redis(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.prefix == "es"
    assert settings.partitions is None
    assert settings.broker_url is None
    assert settings.dramatiq_namespace == "es:dramatiq"
    assert (settings.worker_processes, settings.worker_threads) == (1, 8)
    assert settings.worker_timeout_ms == 20
    assert settings.log_level == "INFO"
    assert settings.metrics_port is None


def test_a_store_on_the_embedded_redis_says_once_that_its_events_stay_in_the_process(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store.from_settings(events={"account": [Opened]})
    warnings = [r for r in caplog.records if "ES_REDIS_URL is not set" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "lost when it exits" in warnings[0].getMessage()
    store.close()


def test_environment_variables_set_the_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ES_PARTITIONS", "8")
    clean_env.setenv("ES_LOG_LEVEL", "debug")
    clean_env.setenv("ES_REDIS_URL", "redis://127.0.0.1:6379/3")
    clean_env.setenv("ES_PUBLISHER_CLAIM_IDLE_MS", "2500")
    settings = load_settings()
    assert settings.partitions == 8
    assert settings.log_level == "DEBUG"
    assert settings.redis_url == "redis://127.0.0.1:6379/3"
    assert settings.publisher_options().claim_idle_ms == 2500


def test_config_file_is_read_and_environment_wins_over_it(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "es.toml").write_text('prefix = "from-file"\npartitions = 4\n')
    clean_env.setenv("ES_PARTITIONS", "8")
    settings = load_settings()
    assert settings.prefix == "from-file"
    assert settings.partitions == 8


def test_es_config_file_names_another_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "prod.toml"
    other.write_text("max_attempts = 9\n")
    clean_env.setenv("ES_CONFIG_FILE", str(other))
    assert load_settings().max_attempts == 9


def test_missing_es_config_file_is_an_error_naming_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ES_CONFIG_FILE", "/nonexistent/es.toml")
    expected = re.escape("ES_CONFIG_FILE='/nonexistent/es.toml'")
    with pytest.raises(ConfigurationError, match=expected):
        load_settings()


def test_unknown_key_in_config_file_is_refused_as_its_key_with_the_closest_setting(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "es.toml").write_text("partitoins = 4\n")
    expected = "'partitoins' (key in 'config/es.toml'): not a setting; did you mean 'partitions'?"
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        load_settings()


def test_an_invalid_value_in_the_config_file_is_named_by_its_key_not_a_variable(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "es.toml").write_text("partitions = 0\nworker_threads = 0\n")
    clean_env.setenv("ES_WORKER_THREADS", "0")  # the environment wins: named as a variable
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "key 'partitions' in 'config/es.toml' = 0: " in str(raised.value)
    assert "ES_PARTITIONS" not in str(raised.value)
    assert "ES_WORKER_THREADS='0'" in str(raised.value)


def test_invalid_toml_is_reported_with_the_file_name(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "es.toml").write_text("prefix = \n")
    with pytest.raises(ConfigurationError, match=r"config/es\.toml.*not valid TOML"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("ES_PARTITIONS", "0", "greater than or equal to 1"),
        ("ES_PARTITIONS", "many", "valid integer"),
        ("ES_PARTITIONS", "5000", "less than or equal to 4096"),
        ("ES_REDIS_URL", "http://127.0.0.1:6379", "redis://, rediss://, unix://"),
        ("ES_BROKER_URL", "kafka://127.0.0.1", "amqp://"),
        ("ES_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("ES_PREFIX", "has space", "invalid key prefix"),
        ("ES_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("ES_WORKER_THREADS", "0", "greater than or equal to 1"),
    ],
)
def test_invalid_setting_error_names_the_variable_and_its_value(
    clean_env: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{name}={value!r}" in message
    assert reason in message


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("ES_REDIS_URL", "redis://h:notaport/0", "the port is not valid"),
        ("ES_REDIS_URL", "redis://h:70000/0", "the port is not valid"),
        ("ES_REDIS_URL", "redis://h:0/0", "the port is not valid"),
        ("ES_REDIS_URL", "redis://h:6412/abc", "the database must be a number"),
        ("ES_REDIS_URL", "redis://h:6412/0?db=x", "the database must be a number"),
        ("ES_REDIS_URL", "redis://:6379/0", "has no host"),
        ("ES_REDIS_URL", "unix://", "needs the socket's path"),
        ("ES_BROKER_URL", "amqp://127.0.0.1:port/", "the port is not valid"),
        ("ES_BROKER_URL", "amqp:///vhost", "has no host"),
    ],
)
def test_urls_are_checked_down_to_port_and_database_number(
    clean_env: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    [heading, line] = str(caught.value).splitlines()
    assert heading.startswith("invalid settings")
    assert f"{name}={value!r}" in line
    assert reason in line


@pytest.mark.parametrize(
    "url",
    ["redis://u:hunter2@h:notaport/0", "redis://:hunter2@h:6379/abc", "http://u:hunter2@h/",
     "redis://u:hunter2@[::1/0", "redis://u:hunter2@/0"],
)
def test_a_bad_url_never_shows_its_password(clean_env: pytest.MonkeyPatch, url: str) -> None:
    clean_env.setenv("ES_REDIS_URL", url)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    assert "ES_REDIS_URL=" in str(caught.value)
    assert ":***@" in str(caught.value)


def test_good_urls_pass(clean_env: pytest.MonkeyPatch) -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://u:p@h/3", "redis://h", "unix:///r.sock",
                "redis://h:6379/?db=2"):
        assert Settings(redis_url=url).redis_url == url
    for url in ("amqp://guest:guest@127.0.0.1:5672/", "amqps://h/vh", "stub://"):
        assert Settings(broker_url=url).broker_url == url


def test_dotenv_file_and_secrets_directory_sit_between_environment_and_toml(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("ES_WORKER_THREADS=3\nES_WORKER_PROCESSES=2\nOTHER=1\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "es_worker_processes").write_text("5")
    (secrets / "es_prefix").write_text("from-secret")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "es.toml").write_text('prefix = "toml"\nworker_timeout_ms = 7\n')
    clean_env.setenv("ES_SECRETS_DIR", str(secrets))
    clean_env.setenv("ES_WORKER_THREADS", "4")

    settings = load_settings()
    assert settings.worker_threads == 4  # environment over .env
    assert settings.worker_processes == 2  # .env over secrets
    assert settings.prefix == "from-secret"  # secrets over the TOML file
    assert settings.worker_timeout_ms == 7  # the TOML file over defaults


def test_a_named_env_file_or_secrets_directory_must_exist(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("ES_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigurationError, match=r"ES_ENV_FILE=.*no such file"):
        load_settings()
    clean_env.delenv("ES_ENV_FILE")
    clean_env.setenv("ES_SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigurationError, match=r"ES_SECRETS_DIR=.*no such directory"):
        load_settings()


def test_a_mistyped_setting_in_the_env_file_is_a_warning_as_in_the_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ".env").write_text("ES_REDIS_ULR=redis://127.0.0.1:6379/0\nES_PREFIX=e\n")

    settings = load_settings()

    assert settings.prefix == "e" and settings.redis_url is None
    assert ("variable ES_REDIS_ULR in '.env' is not an es_workers setting; did you mean "
            "ES_REDIS_URL?") in caplog.text


def test_every_invalid_setting_is_reported_at_once(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ES_PARTITIONS", "0")
    clean_env.setenv("ES_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "ES_PARTITIONS" in str(caught.value)
    assert "ES_LOG_LEVEL" in str(caught.value)


def test_min_backoff_above_max_backoff_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ES_MIN_BACKOFF_MS", "5000")
    clean_env.setenv("ES_MAX_BACKOFF_MS", "100")
    expected = r"min_backoff_ms \(5000\) is above max_backoff_ms"
    with pytest.raises(ConfigurationError, match=expected):
        load_settings()


def test_settings_feed_delivery_and_publisher_options(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(max_attempts=3, lock_ms=2000, redrive_after_ms=700,
                        publisher_batch=50, publisher_sweep_every_ms=100)
    delivery = settings.delivery_options()
    assert (delivery.max_attempts, delivery.lock_ms) == (3, 2000)
    assert delivery.handler_time_limit_ms == 60_000  # DeliveryOptions' default
    publisher = settings.publisher_options()
    assert (publisher.batch, publisher.sweep_every_ms, publisher.redrive_after_ms) == (50, 100, 700)


def test_the_handler_time_limit_is_read_and_must_be_below_the_delivery_time_limit(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("ES_HANDLER_TIME_LIMIT_MS", "8000")
    assert load_settings().delivery_options().handler_time_limit_ms == 8000
    clean_env.setenv("ES_TIME_LIMIT_MS", "8000")
    expected = r"handler_time_limit_ms \(8000\) must be below time_limit_ms \(8000\)"
    with pytest.raises(ConfigurationError, match=expected):
        load_settings()


def test_worker_environment_carries_the_poll_timeout(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(worker_timeout_ms=35, worker_prefetch=4)
    assert settings.worker_environment() == {
        "dramatiq_worker_timeout": "35", "dramatiq_queue_prefetch": "4"
    }


def test_passwords_are_hidden_when_settings_are_shown(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(redis_url="redis://user:s3cret@db:6379/0",
                        broker_url="amqp://guest:s3cret@mq:5672/")
    shown = str(settings.shown())
    assert "s3cret" not in shown
    assert "redis://user:***@db:6379/0" in shown
    assert redact_url("redis://db:6379") == "redis://db:6379"


def test_example_config_file_is_valid_with_every_key_set(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = (ROOT / "config" / "es.example.toml").read_text()
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line
        for line in example.splitlines()
    )
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    clean_env.setenv("ES_CONFIG_FILE", str(path))
    settings = load_settings()
    keys = {line.split(" = ")[0] for line in uncommented.splitlines() if " = " in line
            and not line.startswith("#")}
    assert keys == set(Settings.model_fields)
    assert settings.metrics_port == 9191


def test_example_config_file_is_made_from_the_schema() -> None:
    """Defaults and descriptions live once, in the schema: the shipped example is its output
    (`es-workers config --example > config/es.example.toml` after changing a setting)."""
    assert (ROOT / "config" / "es.example.toml").read_text() == example_toml()


def test_readme_table_gives_each_setting_its_schema_default() -> None:
    rows = re.findall(r"^\| `ES_([A-Z_]+)` \| ([^|]+) \|", (ROOT / "README.md").read_text(),
                      re.MULTILINE)
    documented = {name.lower(): default.strip() for name, default in rows}
    documented.pop("config_file")
    assert set(documented) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        if field.default is None:
            assert documented[name].startswith("unset"), name
        else:
            assert documented[name] == f"`{field.default}`", name


def test_an_unknown_es_variable_is_reported_with_the_closest_setting(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("ES_REDIS_URI", "redis://127.0.0.1:6379/0")
    clean_env.setenv("ES_ZZZ", "1")
    clean_env.setenv("ES_REQUIRE_REDIS", "1")  # the test suite's own switch: not reported

    assert unknown_variables() == {"ES_REDIS_URI": "ES_REDIS_URL", "ES_ZZZ": None}
    load_settings()
    assert "ES_REDIS_URI is not an es_workers setting; did you mean ES_REDIS_URL?" in caplog.text
    assert "ES_ZZZ is not an es_workers setting" in caplog.text
    assert "ES_REQUIRE_REDIS" not in caplog.text


def test_stub_and_redis_broker_urls_pick_the_broker(clean_env: pytest.MonkeyPatch) -> None:
    assert isinstance(build_broker(Settings(broker_url="stub://")), StubBroker)
    broker = build_broker(Settings(broker_url="redis://127.0.0.1:6379/5", prefix="px"))
    assert isinstance(broker, RedisBroker)
    assert broker.namespace == "px:dramatiq"


def test_amqp_broker_url_gives_rabbitmq_or_says_what_to_install(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672/")
    try:
        import pika  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match=r"es_workers\[rabbitmq\]"):
            build_broker(settings)
        return
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    assert isinstance(build_broker(settings), RabbitmqBroker)


def test_from_settings_without_redis_url_runs_publisher_and_worker_in_one_process(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = Settings(prefix=f"t-{uuid.uuid4().hex[:10]}")
    store = Store.from_settings(events={"account": [Opened]}, settings=settings)
    assert isinstance(store.storage, RedisStorage)
    assert type(store.storage.client).__module__.startswith("fakeredis")
    assert store.storage.partitions == 16
    handled: list[tuple[str, int]] = []

    @store.subscribe("account", "audit")
    def audit(event: Event) -> None:
        handled.append((event.entity_id, event.event_number))

    assert isinstance(store.bus, DramatiqEventBus)
    worker = dramatiq.Worker(store.bus.broker, worker_timeout=20, worker_threads=2)
    worker.start()
    publisher = threading.Thread(target=store.start, daemon=True)
    publisher.start()
    try:
        for n in range(3):
            with store.open("account", f"a{n}") as stream:
                stream.write(Opened(owner=f"owner {n}"))
        deadline = time.monotonic() + 20
        while len(handled) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(handled) == [("a0", 1), ("a1", 1), ("a2", 1)]
    finally:
        worker.stop()
        store.close()
        publisher.join(timeout=10)


def test_stores_built_without_redis_url_share_the_embedded_redis(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = Settings(prefix=f"t-{uuid.uuid4().hex[:10]}")
    one = Store.from_settings(events={"account": [Opened]}, settings=settings)
    two = Store.from_settings(events={"account": [Opened]}, settings=settings)
    with one.open("account", "a1") as stream:
        stream.write(Opened(owner="Ada"))
    assert [e.content for e in two.read("account", "a1")] == [Opened(owner="Ada")]


def test_from_settings_on_real_redis_keeps_the_partitions_of_the_prefix(
    clean_env: pytest.MonkeyPatch,
) -> None:
    client = real_redis()
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    try:
        store = Store.from_settings(
            events={"account": [Opened]},
            settings=Settings(redis_url=REDIS_URL, prefix=prefix, partitions=4),
        )
        assert isinstance(store.storage, RedisStorage)
        assert store.storage.partitions == 4
        assert isinstance(store.bus, DramatiqEventBus)
        assert isinstance(store.bus.broker, RedisBroker)
        assert store.bus.broker.namespace == f"{prefix}:dramatiq"
        with store.open("account", "a1") as stream:
            stream.write(Opened(owner="Ada"))
        assert client.exists(store.storage.keys.stream("account", "a1"))
        # Unset: the stored number is used; a different one is refused.
        again = Store.from_settings(settings=Settings(redis_url=REDIS_URL, prefix=prefix))
        assert isinstance(again.storage, RedisStorage)
        assert again.storage.partitions == 4
        with pytest.raises(ConfigurationError, match="created with 4 partitions, not 8"):
            Store.from_settings(settings=Settings(redis_url=REDIS_URL, prefix=prefix,
                                                  partitions=8))
    finally:
        delete_prefix(client, prefix)


def test_max_event_bytes_caps_what_a_store_from_settings_writes(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("ES_MAX_EVENT_BYTES", "2048")
    store = Store.from_settings(events={"account": [Opened]},
                                settings=Settings(prefix=f"t-{uuid.uuid4().hex[:10]}"))
    with store.open("account", "a1") as stream, pytest.raises(EventTooLargeError):
        stream.write(Opened(owner="x" * 2048))
    with store.open("account", "a1") as stream:
        stream.write(Opened(owner="x" * 2000))
    assert [e.event_number for e in store.read("account", "a1")] == [1]
