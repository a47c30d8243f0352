"""Settings: environment variables `ES_...`, over a TOML file, over defaults.

The file is `config/es.toml` (relative to the current directory) when it exists, or the
file named by `ES_CONFIG_FILE`. Environment variables win over the file. Defaults run on
an embedded, in-process Redis (fakeredis), so nothing needs a server to try it out.

This module only describes the settings; `es_workers.wiring` builds what they name.
Each default is written once: in the options dataclass the setting feeds, or here.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import textwrap
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigurationError
from .redis.keys import RedisKeys
from .redis.publisher import PublisherOptions
from .workers.bus import DEFAULT_TIME_LIMIT_MS
from .workers.delivery import DeliveryOptions

ENV_PREFIX = "ES_"
DEFAULT_CONFIG_FILE = Path("config") / "es.toml"
CONFIG_FILE_ENV = "ES_CONFIG_FILE"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_DELIVERY = DeliveryOptions()
_PUBLISHER = PublisherOptions()


def config_file() -> Path | None:
    """The TOML file settings are read from, or None when there is none to read."""
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigurationError(f"{CONFIG_FILE_ENV}={named!r}: no such file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


class Settings(BaseSettings):
    """Every setting; environment variable `ES_<NAME>` or key `<name>` in the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    # Where events live.
    redis_url: str | None = Field(
        default=None,
        description="Redis for events and delivery state; unset: embedded fakeredis",
        examples=["redis://127.0.0.1:6379/0"],
    )
    redis_cluster: Literal["auto", "true", "false"] = Field(
        default="auto",
        description="Whether redis_url names a node of a Redis Cluster: auto asks the server "
        "(INFO cluster); a cluster needs broker_url (RabbitMQ or a standalone Redis)",
    )
    prefix: str = Field(default="es", description="Key prefix of this store in Redis")
    partitions: int | None = Field(
        default=None, ge=1, le=4096,
        description="Partitions of a new prefix (16 when unset); fixed once the prefix exists",
        examples=[16],
    )
    # The bus.
    broker_url: str | None = Field(
        default=None,
        description="Dramatiq broker: redis://..., amqp://... (RabbitMQ) or stub://; "
        "unset: the Redis of redis_url",
        examples=["amqp://guest:guest@127.0.0.1:5672/"],
    )
    broker_namespace: str | None = Field(
        default=None,
        description="Dramatiq key namespace on a Redis broker; unset: '<prefix>:dramatiq'",
        examples=["es:dramatiq"],
    )
    # Worker processes.
    worker_processes: int = Field(
        default=1, ge=1, le=256, description="Dramatiq worker processes"
    )
    worker_threads: int = Field(
        default=8, ge=1, le=1024, description="Threads per worker process"
    )
    worker_timeout_ms: int = Field(
        default=20, ge=1, le=60_000,
        description="How often idle consumers poll: the delay queues (retries) always, and the "
        "main queues too on a RabbitMQ broker (on Redis they are woken by each enqueue)",
    )
    worker_prefetch: int = Field(
        default=0, ge=0, le=65_535,
        description="Messages prefetched per queue; 0: 2 x worker_threads",
    )
    # Delivery: es_workers.delivery.DeliveryOptions.
    max_attempts: int = Field(
        default=_DELIVERY.max_attempts, ge=1,
        description="Handler attempts before the entity is parked",
    )
    min_backoff_ms: int = Field(
        default=_DELIVERY.min_backoff_ms, ge=0,
        description="First retry delay of a failing handler",
    )
    max_backoff_ms: int = Field(
        default=_DELIVERY.max_backoff_ms, ge=0,
        description="Longest retry delay of a failing handler",
    )
    lock_ms: int = Field(
        default=_DELIVERY.lock_ms, ge=100,
        description="Lease of a (subscriber, entity) lock; a crashed worker's entities wait "
        "this long",
    )
    redrive_after_ms: int = Field(
        default=_PUBLISHER.redrive_after_ms, ge=100,
        description="A notice not seen handled by then is sent again",
    )
    time_limit_ms: int = Field(
        default=DEFAULT_TIME_LIMIT_MS, ge=1000,
        description="Dramatiq time limit of one delivery (all events of it)",
    )
    # Publisher: es_workers.publisher.PublisherOptions.
    publisher_batch: int = Field(
        default=_PUBLISHER.batch, ge=1,
        description="Outbox entries read per partition per round",
    )
    publisher_block_ms: int = Field(
        default=_PUBLISHER.block_ms, ge=1,
        description="How long one outbox read waits for entries",
    )
    publisher_claim_idle_ms: int = Field(
        default=_PUBLISHER.claim_idle_ms, ge=100,
        description="Outbox entries pending this long belong to a dead publisher and are "
        "claimed",
    )
    publisher_claim_every_ms: int = Field(
        default=_PUBLISHER.claim_every_ms, ge=10,
        description="How often to look for such entries",
    )
    publisher_sweep_every_ms: int = Field(
        default=_PUBLISHER.sweep_every_ms, ge=10,
        description="How often to re-send notices that are due (see redrive_after_ms)",
    )
    publisher_catch_up_page: int = Field(
        default=_PUBLISHER.catch_up_page, ge=1,
        description="Entities per page when a new subscriber is handed the history",
    )
    publisher_min_backoff_ms: int = Field(
        default=_PUBLISHER.min_backoff_ms, ge=1,
        description="First retry delay when Redis or the bus fails",
    )
    publisher_max_backoff_ms: int = Field(
        default=_PUBLISHER.max_backoff_ms, ge=1,
        description="Longest retry delay when Redis or the bus fails",
    )
    # Operations.
    log_level: str = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65_535,
        description="Prometheus metrics: publisher on this port, worker processes on the "
        "next ones; unset: off",
        examples=[9191],
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_file()
        if path is None:
            return (init_settings, env_settings)
        try:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        except tomllib.TOMLDecodeError as error:
            raise ConfigurationError(
                f"config file {str(path)!r} is not valid TOML: {error}"
            ) from None
        return (init_settings, env_settings, toml)

    @field_validator("redis_url", "broker_url", "broker_namespace", "partitions",
                     "metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL (or unset: embedded)")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        schemes = ("redis", "rediss", "unix", "amqp", "amqps", "stub")
        if value is not None and urlsplit(value).scheme not in schemes:
            raise ValueError(
                "must be a redis://, rediss://, unix://, amqp://, amqps:// or stub:// URL "
                "(or unset: the Redis of redis_url)"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        try:
            RedisKeys(value, 1)
        except ConfigurationError as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("redis_cluster", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")

    @model_validator(mode="after")
    def _check_ranges(self) -> Settings:
        if self.min_backoff_ms > self.max_backoff_ms:
            raise ValueError(
                f"min_backoff_ms ({self.min_backoff_ms}) is above max_backoff_ms "
                f"({self.max_backoff_ms})"
            )
        if self.publisher_min_backoff_ms > self.publisher_max_backoff_ms:
            raise ValueError(
                f"publisher_min_backoff_ms ({self.publisher_min_backoff_ms}) is above "
                f"publisher_max_backoff_ms ({self.publisher_max_backoff_ms})"
            )
        return self

    # What the settings feed.
    def delivery_options(self) -> DeliveryOptions:
        return DeliveryOptions(
            max_attempts=self.max_attempts,
            min_backoff_ms=self.min_backoff_ms,
            max_backoff_ms=self.max_backoff_ms,
            lock_ms=self.lock_ms,
        )

    def publisher_options(self) -> PublisherOptions:
        return PublisherOptions(
            batch=self.publisher_batch,
            block_ms=self.publisher_block_ms,
            claim_idle_ms=self.publisher_claim_idle_ms,
            claim_every_ms=self.publisher_claim_every_ms,
            sweep_every_ms=self.publisher_sweep_every_ms,
            catch_up_page=self.publisher_catch_up_page,
            min_backoff_ms=self.publisher_min_backoff_ms,
            max_backoff_ms=self.publisher_max_backoff_ms,
            redrive_after_ms=self.redrive_after_ms,
        )

    @property
    def dramatiq_namespace(self) -> str:
        # Under the store's prefix: two apps on one Redis never share subscriber queues,
        # and deleting the prefix deletes the queues too.
        return self.broker_namespace or f"{self.prefix}:dramatiq"

    def worker_environment(self) -> dict[str, str]:
        """Environment variables Dramatiq reads when it is imported (not CLI flags)."""
        env = {"dramatiq_worker_timeout": str(self.worker_timeout_ms)}
        if self.worker_prefetch:
            env["dramatiq_queue_prefetch"] = str(self.worker_prefetch)
        return env

    def shown(self) -> dict[str, Any]:
        """The settings with passwords in URLs hidden, for logs and `es-workers config`."""
        values = self.model_dump()
        for name in ("redis_url", "broker_url"):
            values[name] = redact_url(values[name])
        return values


# Sections of the example config file: (title, its first setting).
SECTIONS = (
    ("Where events live", "redis_url"),
    ("The bus (Dramatiq broker)", "broker_url"),
    ("Worker processes (es-workers worker)", "worker_processes"),
    ("Delivery to subscribers", "max_attempts"),
    ("Publisher (es-workers publish)", "publisher_batch"),
    ("Operations", "log_level"),
)
EXAMPLE_HEADER = """\
# es_workers settings: copy to config/es.toml (read from the current directory), or
# point ES_CONFIG_FILE at a file of your own. Environment variables ES_<NAME> win over
# this file. Every key is optional; the values shown commented out are the defaults.
# (Made by `es-workers config --example` from the settings schema.)
"""


def example_toml() -> str:
    """config/es.example.toml, made from the schema: every setting, its description and
    its default (or an example where it has none), commented out."""
    titles = {first: title for title, first in SECTIONS}
    lines = [EXAMPLE_HEADER.rstrip("\n")]
    for name, field in Settings.model_fields.items():
        if name in titles:
            lines += ["", f"# -- {titles[name]} ".ljust(80, "-")]
        lines += [f"# {line}" for line in textwrap.wrap(field.description or "", 86)]
        value = field.default if field.default is not None else (field.examples or [""])[0]
        lines.append(f"# {name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced by '***'."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


# ES_ variables that are not settings but are known: the config file's name, and the
# switches of the test suite.
NOT_SETTINGS = (CONFIG_FILE_ENV, "ES_REQUIRE_")


def unknown_variables(environ: dict[str, str] | None = None) -> dict[str, str | None]:
    """`ES_...` environment variables that are no setting, each with the closest setting's
    variable (None when nothing is close): most likely typos."""
    known = [env_name(name) for name in Settings.model_fields]
    found: dict[str, str | None] = {}
    for name in sorted(os.environ if environ is None else environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if any(upper.startswith(other) for other in NOT_SETTINGS):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        found[name] = close[0] if close else None
    return found


def warn_unknown_variables() -> None:
    for name, closest in unknown_variables().items():
        hint = f"; did you mean {closest}?" if closest else ""
        logging.getLogger("es_workers.settings").warning(
            "environment variable %s is not an es_workers setting%s", name, hint
        )


def load_settings(**overrides: Any) -> Settings:
    """Reads the settings; any invalid one raises ConfigurationError naming it and its value.
    Environment variables `ES_...` that are no setting are reported as warnings."""
    warn_unknown_variables()
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigurationError(describe_errors(error)) from None


def describe_errors(error: ValidationError) -> str:
    path = config_file()
    where = f"environment {ENV_PREFIX}* or {str(path)!r}" if path else f"environment {ENV_PREFIX}*"
    lines = [f"invalid settings (from {where}):"]
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        message = str(item["msg"]).removeprefix("Value error, ")
        if not field:  # a check across fields
            lines.append(f"  {message}")
        elif item["type"] == "extra_forbidden":
            lines.append(f"  {field!r}: not a setting (config file key or keyword)")
        else:
            lines.append(f"  {env_name(field)}={item.get('input')!r}: {message}")
    return "\n".join(lines)
