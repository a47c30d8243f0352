"""Settings: environment variables `ES_...`, over a TOML file, over defaults.

The file is `config/es.toml` (relative to the current directory) when it exists, or the
file named by `ES_CONFIG_FILE`. Environment variables win over the file. Defaults run on
an embedded, in-process Redis (fakeredis), so nothing needs a server to try it out.

This module only describes the settings; `es_workers.wiring` builds what they name.
Each default is written once: in the options dataclass the setting feeds, or here.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .codec import DEFAULT_MAX_EVENT_BYTES
from .encryption import MasterKey
from .errors import ConfigurationError
from .names import closest as closest_name
from .redis.durability import Durability
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
_DURABILITY = Durability()


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
    max_event_bytes: int = Field(
        default=DEFAULT_MAX_EVENT_BYTES, ge=1024,
        description="Largest event accepted at write, in bytes of JSON data and metadata; a "
        "larger one is refused (EventTooLargeError), nothing stored",
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
        description="How often idle consumers poll on a RabbitMQ broker (on Redis each enqueue "
        "wakes them, and a delay queue's also its messages' etas), and idle worker threads "
        "look for work",
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
        description="Lease of a (subscriber, entity) lock, renewed every third of it while "
        "the handler runs; a crashed or paused worker's entities wait this long",
    )
    handler_time_limit_ms: int = Field(
        default=_DELIVERY.handler_time_limit_ms, ge=10,
        description="A handler running longer is stopped and the attempt counts as failed "
        "(parked after max_attempts); below time_limit_ms",
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
    log_keep: int | None = Field(
        default=_PUBLISHER.log_keep, ge=1,
        description="Events the publisher keeps in each partition's log when it trims it "
        "(every ES_LOG_TRIM_EVERY_MS); never those a named follower has not done. Unset: "
        "the log is never trimmed",
        examples=[1_000_000],
    )
    log_keep_for_ms: int | None = Field(
        default=_PUBLISHER.log_keep_for_ms, ge=1,
        description="With it, the publisher's trim also keeps the events of the last that "
        "many milliseconds (by event time): at least ES_LOG_KEEP events or that much time, "
        "whichever keeps more; never those a named follower has not done. Alone, it trims "
        "by time only",
        examples=[604_800_000],
    )
    log_trim_every_ms: int = Field(
        default=_PUBLISHER.trim_every_ms, ge=10,
        description="How often the publisher trims the log (with ES_LOG_KEEP or "
        "ES_LOG_KEEP_FOR_MS set)",
    )
    scavenge_interval_ms: int | None = Field(
        default=_PUBLISHER.scavenge_interval_ms, ge=10,
        description="How often the publisher runs the scavenger (`es-workers scavenge`): "
        "removes what truncations and retention limits allow, never an event a subscriber "
        "has not handled. Unset: never",
        examples=[3_600_000],
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
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Logs of every process (CLI, publisher, Dramatiq workers): text lines, or "
        "json: one object per line with time, level, logger, pid, message and the event's "
        "fields",
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65_535,
        description="Prometheus metrics of every es_workers process of the container (or host) "
        "on this one port; unset: off",
        examples=[9191],
    )
    # When Redis fails: timeouts, replica-confirmed writes, Sentinel (es_workers.wiring
    # builds the clients; es_workers.redis.durability waits).
    redis_connect_timeout_ms: int = Field(
        default=2000, ge=1,
        description="How long connecting to Redis may take before the call fails",
    )
    redis_timeout_ms: int = Field(
        default=5000, ge=1,
        description="How long Redis may take to answer a command (socket timeout); above "
        "publisher_block_ms and wait_timeout_ms",
    )
    wait_replicas: int = Field(
        default=_DURABILITY.replicas, ge=0,
        description="Replicas that must confirm each append (WAIT) before write returns; "
        "fewer raise DurabilityError",
    )
    wait_timeout_ms: int = Field(
        default=_DURABILITY.timeout_ms, ge=1,
        description="How long an append waits for those replicas (and the AOF)",
    )
    wait_aof: bool = Field(
        default=_DURABILITY.aof,
        description="Also wait until the append is in the append-only file (WAITAOF: Redis "
        ">= 7.2, refused at start-up on older servers)",
    )
    redis_sentinels: str | None = Field(
        default=None,
        description="Sentinels as host:port,host:port,...: storage, publisher, workers and the "
        "Dramatiq broker follow the primary they name (redis_url is then ignored)",
        examples=["127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381"],
    )
    redis_sentinel_master: str | None = Field(
        default=None, description="The Sentinel master name (with redis_sentinels)",
        examples=["mymaster"],
    )
    redis_username: str | None = Field(
        default=None,
        description="Redis ACL user of every connection to the events' Redis (redis_url, its "
        "cluster nodes, the Sentinel primary, the Dramatiq broker on it); a user in redis_url "
        "must be the same",
        examples=["app"],
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="Redis password of every connection to the events' Redis, as "
        "redis_username; a password in redis_url must be the same; never shown",
        examples=[""],
    )
    redis_db: int = Field(
        default=0, ge=0, description="Redis database number with redis_sentinels",
    )
    # Personal data (es_workers.encryption; wiring builds the MasterKeys).
    encryption_key: SecretStr | None = Field(
        default=None,
        description="Master key of Personal fields: base64 of 32 bytes (`es-workers keys "
        "new`); unset: writing a Personal field is refused; never shown",
        examples=[""],
    )
    encryption_keys: SecretStr | None = Field(
        default=None,
        description="Older master keys, comma-separated: they still unwrap data keys until "
        "`es-workers keys rotate` re-wraps them with encryption_key; never shown",
        examples=[""],
    )
    # The archive (es_workers.postgres; `es-workers archive`).
    archive_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL of the archive, postgresql://user:password@host:5432/db "
        "(extra es_workers[archive]): `es-workers archive` copies events older than the hot "
        "window there and reads go through it; unset: no archive; never shown",
        examples=[""],
    )
    archive_after: int = Field(
        default=100, ge=0,
        description="Events of each entity kept hot in Redis: older ones are archived (and "
        "then removed by the scavenger); per entity type: `Store(..., archive={...})`",
    )
    archive_after_age_ms: int | None = Field(
        default=None, ge=1,
        description="Also archive an entity's events older than this, however few it has "
        "(its newest event stays hot); unset: by count only",
        examples=[604_800_000],
    )
    archive_batch: int = Field(
        default=5000, ge=1,
        description="Events `es-workers archive` copies to PostgreSQL per transaction",
    )
    archive_nice: int = Field(
        default=10, ge=0, le=19,
        description="Niceness `es-workers archive` takes at start (at least this; also its "
        "session's autogroup on Linux when it leads the session, as under honcho): the app's "
        "processes get the CPU first, archiving only lags (es_archive_lag_seconds); 0: as "
        "the others",
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
        sources = [init_settings, env_settings, *file_sources(settings_cls)]
        path = config_file()
        if path is None:
            return tuple(sources)
        try:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        except tomllib.TOMLDecodeError as error:
            raise ConfigurationError(
                f"config file {str(path)!r} is not valid TOML: {error}"
            ) from None
        return (*sources, toml)

    @field_validator("redis_url", "broker_url", "broker_namespace", "partitions",
                     "metrics_port", "log_keep", "log_keep_for_ms", "scavenge_interval_ms",
                     "redis_sentinels",
                     "redis_sentinel_master",
                     "redis_username", "redis_password", "encryption_key", "encryption_keys",
                     "archive_url", "archive_after_age_ms", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, REDIS_SCHEMES, "unset: embedded")

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        schemes = (*REDIS_SCHEMES, "amqp", "amqps", "stub")
        return None if value is None else check_url(value, schemes, "unset: the Redis of redis_url")

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str | None) -> str | None:
        if value is not None:
            sentinel_addresses(value)
        return value

    @field_validator("encryption_key", "encryption_keys")
    @classmethod
    def _check_master_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            for number, text in enumerate(value.get_secret_value().split(","), start=1):
                try:
                    MasterKey.parse(text, f"key #{number}")
                except ConfigurationError as error:  # its message never quotes the key
                    raise ValueError(str(error)) from None
        return value

    @field_validator("archive_url")
    @classmethod
    def _check_archive_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_url(value.get_secret_value(), ARCHIVE_SCHEMES, "unset: no archive")
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
        if self.handler_time_limit_ms >= self.time_limit_ms:
            raise ValueError(
                f"handler_time_limit_ms ({self.handler_time_limit_ms}) must be below "
                f"time_limit_ms ({self.time_limit_ms}): Dramatiq would stop the whole "
                "delivery first, and retry it"
            )
        self._check_failure_settings()
        return self

    def _check_failure_settings(self) -> None:
        if self.redis_timeout_ms <= max(self.publisher_block_ms, self.wait_timeout_ms):
            raise ValueError(
                f"redis_timeout_ms ({self.redis_timeout_ms}) must be above publisher_block_ms "
                f"({self.publisher_block_ms}) and wait_timeout_ms ({self.wait_timeout_ms}): "
                "those commands wait that long for their answer"
            )
        if (self.redis_sentinels is None) != (self.redis_sentinel_master is None):
            raise ValueError("redis_sentinels and redis_sentinel_master go together")
        self._check_credentials()

    def _check_credentials(self) -> None:
        """Credentials given twice, in redis_url and in redis_username/redis_password, must
        agree: which one a connection used would otherwise be a guess. Never shown."""
        if self.redis_url is None or self.redis_sentinels is not None:
            return
        in_url = url_credentials(self.redis_url)
        password = self.redis_password.get_secret_value() if self.redis_password else None
        for name, given in (("redis_username", self.redis_username),
                            ("redis_password", password)):
            found = in_url.get(name.removeprefix("redis_"))
            if given is not None and found is not None and found != given:
                raise ValueError(
                    f"{env_name('redis_url')} holds a {name.removeprefix('redis_')} and "
                    f"{env_name(name)} another one: give it in one place"
                )

    # What the settings feed.
    def delivery_options(self) -> DeliveryOptions:
        """The options of delivery to subscribers these settings give."""
        return DeliveryOptions(
            max_attempts=self.max_attempts,
            min_backoff_ms=self.min_backoff_ms,
            max_backoff_ms=self.max_backoff_ms,
            lock_ms=self.lock_ms,
            handler_time_limit_ms=self.handler_time_limit_ms,
        )

    def publisher_options(self) -> PublisherOptions:
        """The publisher's options these settings give."""
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
            log_keep=self.log_keep,
            log_keep_for_ms=self.log_keep_for_ms,
            trim_every_ms=self.log_trim_every_ms,
            scavenge_interval_ms=self.scavenge_interval_ms,
        )

    def durability(self) -> Durability:
        """What an append waits for (replicas, the AOF) by these settings."""
        return Durability(
            replicas=self.wait_replicas, timeout_ms=self.wait_timeout_ms, aof=self.wait_aof
        )

    @property
    def uses_redis(self) -> bool:
        """Whether events live on a Redis server (redis_url or Sentinel), not embedded."""
        return self.redis_url is not None or self.redis_sentinels is not None

    @property
    def dramatiq_namespace(self) -> str:
        """The Dramatiq key namespace: broker_namespace, or '<prefix>:dramatiq'."""
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
        values["redis_password"] = "***" if self.redis_password is not None else None
        for name in ("encryption_key", "encryption_keys", "archive_url"):
            values[name] = "***" if getattr(self, name) is not None else None
        return values


# Sections of the example config file: (title, its first setting).
SECTIONS = (
    ("Where events live", "redis_url"),
    ("The bus (Dramatiq broker)", "broker_url"),
    ("Worker processes (es-workers worker)", "worker_processes"),
    ("Delivery to subscribers", "max_attempts"),
    ("Publisher (es-workers publish)", "publisher_batch"),
    ("Operations", "log_level"),
    ("When Redis fails: timeouts, durability, Sentinel", "redis_connect_timeout_ms"),
    ("Personal data (encrypted fields, forget)", "encryption_key"),
    ("The archive in PostgreSQL (es-workers archive)", "archive_url"),
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


# -- Operator safety: URLs, redaction, .env and secrets files (issue 10) -------------------

REDIS_SCHEMES = ("redis", "rediss", "unix")
ARCHIVE_SCHEMES = ("postgresql", "postgres")
ENV_FILE_ENV = "ES_ENV_FILE"  # the .env file read (default: .env in the current directory)
SECRETS_DIR_ENV = "ES_SECRETS_DIR"  # a directory of one file per setting (default /run/secrets)
DEFAULT_ENV_FILE = Path(".env")
DEFAULT_SECRETS_DIR = Path("/run/secrets")


def check_url(url: str, schemes: tuple[str, ...], unset: str) -> str:
    """Returns `url` if its scheme, host, port and (Redis) database number are valid; else
    raises ValueError saying what is wrong, never quoting the URL (it may hold a password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:  # urllib's message quotes the bad part, which may be secret
        what = "port" if "port" in str(error).lower() else "URL"
        raise ValueError(f"the {what} is not valid: a port is a number in 1..65535") from None
    if parts.scheme not in schemes:
        listed = ", ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"must be a {listed} URL ({unset})")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path: unix:///path/to/redis.sock")
    elif parts.scheme != "stub":
        if not parts.hostname:
            raise ValueError(f"has no host: {parts.scheme}://HOST:PORT/...")
        if port == 0:
            raise ValueError("the port is not valid: a port is a number in 1..65535")
    if parts.scheme in ("redis", "rediss"):
        _check_redis_db(parts.path, parse_qs(parts.query).get("db", []))
    return url


def _check_redis_db(path: str, query_db: list[str]) -> None:
    for db in [path.strip("/"), *query_db]:
        if db and not db.isdigit():
            raise ValueError(f"the database must be a number, as in redis://host:6379/0, "
                             f"not {db!r}")


def url_credentials(url: str) -> dict[str, str]:
    """The username and password a Redis URL holds (in its user part or its query), as
    redis-py reads them."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    found = {"username": parts.username, "password": parts.password}
    for name in found:
        if query.get(name):
            found[name] = query[name][0]
    return {name: unquote(value) for name, value in found.items() if value}


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced by '***' (works on malformed URLs too)."""
    if url is None or "@" not in url:
        return url
    scheme, separator, rest = url.partition("://")
    userinfo, _, host = rest.rpartition("@")
    if not separator or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


class _EsDotEnv(DotEnvSettingsSource):
    """A .env file may hold other programs' variables (docker compose reads it too): only
    `ES_...` ones are read. An `ES_...` one that is no setting is ignored with a warning
    (`warn_unknown_variables`), as the same typo in the environment is."""

    def __call__(self) -> dict[str, Any]:
        prefix = ENV_PREFIX.lower()
        values = {}
        for name, value in super().__call__().items():
            if name in self.settings_cls.model_fields:
                values[name] = value
            elif name.lower().startswith(prefix):
                variable = name.upper()
                _dotenv_unknown[variable] = (str(self.env_file), closest_name(
                    variable, [env_name(field) for field in self.settings_cls.model_fields]))
        return values


def file_sources(settings_cls: type[BaseSettings]) -> list[PydanticBaseSettingsSource]:
    """The .env file and the secrets directory, when there are any. Precedence, highest
    first: keyword arguments, environment, .env file, secrets directory, TOML file,
    defaults."""
    sources: list[PydanticBaseSettingsSource] = []
    env_file = Path(os.environ.get(ENV_FILE_ENV) or DEFAULT_ENV_FILE)
    if env_file.is_file():
        sources.append(_EsDotEnv(settings_cls, env_file=env_file))
    elif os.environ.get(ENV_FILE_ENV):
        raise ConfigurationError(f"{ENV_FILE_ENV}={str(env_file)!r}: no such file")
    named = os.environ.get(SECRETS_DIR_ENV)
    secrets = Path(named) if named else DEFAULT_SECRETS_DIR
    if secrets.is_dir():
        sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets))
    elif named:
        raise ConfigurationError(f"{SECRETS_DIR_ENV}={named!r}: no such directory")
    return sources


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """`host:port,host:port,...` as (host, port) pairs; ValueError naming a bad one."""
    addresses = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65_536:
            raise ValueError(f"{item.strip()!r} is not host:port (expected host:port,...)")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


# ES_ variables that are not settings but are known: the config file's name, and the
# switches of the test suite.
NOT_SETTINGS = (CONFIG_FILE_ENV, ENV_FILE_ENV, SECRETS_DIR_ENV, "ES_DASHBOARD_TOKEN",
                "ES_REQUIRE_", "ES_TEST_")


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
        found[name] = closest_name(upper, known)
    return found


_reported: set[str] = set()  # unknown variables already warned about by this process
_dotenv_unknown: dict[str, tuple[str, str | None]] = {}  # .env name: (file, closest setting)


def warn_unknown_variables() -> None:
    """A warning per `ES_...` variable that is no setting (in the environment or the .env
    file read last), once per process."""
    found = {name: (f"environment variable {name}", closest)
             for name, closest in unknown_variables().items()}
    for name, (path, closest) in _dotenv_unknown.items():
        found.setdefault(f"{path}:{name}", (f"variable {name} in {path!r}", closest))
    for key, (what, closest) in found.items():
        if key in _reported:
            continue
        _reported.add(key)
        hint = f"; did you mean {closest}?" if closest else ""
        logging.getLogger("es_workers.settings").warning(
            "%s is not an es_workers setting%s", what, hint
        )


def load_settings(*, report_unknown: bool = True, **overrides: Any) -> Settings:
    """Reads the settings; any invalid one raises ConfigurationError naming it and its value.
    Environment variables `ES_...` that are no setting are reported as warnings (unless
    `report_unknown` is False: a caller that configures logging from the settings first
    calls `warn_unknown_variables` itself)."""
    _dotenv_unknown.clear()  # filled again as the .env file is read
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigurationError(describe_errors(error)) from None
    finally:
        if report_unknown:
            warn_unknown_variables()


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting, named as it was given: the environment variable, or
    the config file's key (a key that is no setting with the closest one)."""
    path = config_file()
    where = f"environment {ENV_PREFIX}* or {str(path)!r}" if path else f"environment {ENV_PREFIX}*"
    in_file = file_keys(path)
    lines = [f"invalid settings (from {where}):"]
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        message = str(item["msg"]).removeprefix("Value error, ")
        if not field:  # a check across fields
            lines.append(f"  {message}")
            continue
        shown = item.get("input")
        shown = redact_url(shown) if isinstance(shown, str) else shown
        if item["type"] == "extra_forbidden":
            near = closest_name(field, list(Settings.model_fields))
            hint = f"; did you mean {near!r}?" if near else ""
            source = f"key in {str(path)!r}" if field in in_file else "keyword"
            lines.append(f"  {field!r} ({source}): not a setting{hint}")
        elif field in in_file and not given_outside_file(field):
            lines.append(f"  key {field!r} in {str(path)!r} = {shown!r}: {message}")
        else:
            lines.append(f"  {env_name(field)}={shown!r}: {message}")
    return "\n".join(lines)


def file_keys(path: Path | None) -> set[str]:
    """The keys of the config file (empty without one)."""
    if path is None:
        return set()
    try:
        return set(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError):  # reported where the file is read
        return set()


def given_outside_file(field: str) -> bool:
    """Whether an environment variable (which wins over the file) sets the setting."""
    return any(name.upper() == env_name(field) for name in os.environ)
