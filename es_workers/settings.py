"""Settings: environment variables `ES_...`, over a TOML file, over defaults.

The file is `config/es.toml` (relative to the current directory) when it exists, or the
file named by `ES_CONFIG_FILE`. Environment variables win over the file. Defaults run on
an embedded, in-process Redis (fakeredis), so nothing needs a server to try it out.

`build_store` turns settings into a wired `Store` (Redis client, RedisStorage, Dramatiq
broker, DramatiqEventBus) in one place; `Store.from_settings` calls it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .delivery import DeliveryOptions
from .errors import ConfigurationError
from .publisher import PublisherOptions
from .storage.keys import RedisKeys

if TYPE_CHECKING:
    import dramatiq
    import fakeredis
    import redis

    from .event import Content
    from .store import Store
    from .upgrade import EventUpgrade

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
    )
    prefix: str = Field(default="es", description="Key prefix of this store in Redis")
    partitions: int | None = Field(
        default=None, ge=1, le=4096,
        description="Partitions of a new prefix (16 when unset); fixed once the prefix exists",
    )
    # The bus.
    broker_url: str | None = Field(
        default=None,
        description="Dramatiq broker: redis://..., amqp://... (RabbitMQ) or stub://; "
        "unset: the Redis of redis_url",
    )
    broker_namespace: str | None = Field(
        default=None,
        description="Dramatiq key namespace on a Redis broker; unset: '<prefix>:dramatiq'",
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
        default=_DELIVERY.redrive_after_ms, ge=100,
        description="A notice not seen handled by then is sent again",
    )
    time_limit_ms: int = Field(
        default=600_000, ge=1000,
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
            redrive_after_ms=self.redrive_after_ms,
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


def load_settings(**overrides: Any) -> Settings:
    """Reads the settings; any invalid one raises ConfigurationError naming it and its value."""
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


# -- Building a Store -------------------------------------------------------------------

_embedded_lock = threading.Lock()
_embedded: fakeredis.FakeServer | None = None


def require_fakeredis() -> None:
    """The embedded Redis needs fakeredis, an extra (`demo`), not a core dependency."""
    if importlib.util.find_spec("fakeredis") is None:
        raise ConfigurationError(
            f"{env_name('redis_url')} is not set, so es_workers would run on an embedded Redis, "
            "which needs fakeredis: pip install 'es_workers[demo]', or set "
            f"{env_name('redis_url')}=redis://HOST:6379/0"
        )


def embedded_server() -> fakeredis.FakeServer:
    """The process's embedded Redis (fakeredis), shared by every Store built without
    `redis_url`, as one real server would be. It lives in this process only."""
    global _embedded
    require_fakeredis()
    import fakeredis

    with _embedded_lock:
        if _embedded is None:
            _embedded = fakeredis.FakeServer(version=(7, 0))
        return _embedded


def redis_client(settings: Settings) -> redis.Redis:
    import redis

    if settings.redis_url is None:
        require_fakeredis()
        import fakeredis

        return fakeredis.FakeRedis(server=embedded_server())
    return redis.Redis.from_url(settings.redis_url)


def build_broker(settings: Settings) -> dramatiq.Broker:
    """The Dramatiq broker the settings name, with the worker-process setup middleware."""
    from .observability import WorkerProcessSetup

    url = settings.broker_url or settings.redis_url
    scheme = urlsplit(url).scheme if url else None
    broker: dramatiq.Broker
    if scheme is None:
        require_fakeredis()
        import fakeredis

        from .bus.redis_broker import WakingRedisBroker

        broker = WakingRedisBroker(
            client=fakeredis.FakeRedis(server=embedded_server()),
            namespace=settings.dramatiq_namespace,
        )
    elif scheme in ("amqp", "amqps"):
        try:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker
        except ImportError as error:
            raise ConfigurationError(
                f"{env_name('broker_url')}={redact_url(url)!r} needs RabbitMQ support: "
                f"pip install 'es_workers[rabbitmq]' ({error})"
            ) from None
        broker = RabbitmqBroker(url=url)
    elif scheme == "stub":
        from dramatiq.brokers.stub import StubBroker

        broker = StubBroker()
    else:
        from .bus.redis_broker import WakingRedisBroker

        broker = WakingRedisBroker(url=url, namespace=settings.dramatiq_namespace)
    broker.add_middleware(WorkerProcessSetup(settings.log_level, settings.metrics_port))
    return broker


def build_store(
    settings: Settings | None = None,
    *,
    events: Mapping[str, Iterable[type[Content]]] | None = None,
    upgrades: Mapping[str, Sequence[EventUpgrade]] | None = None,
) -> Store:
    """A Store on RedisStorage with a DramatiqEventBus, as the settings say.

    Reading settings, reaching Redis and checking the stored partitions all happen here,
    so a misconfigured process fails at start-up with a message naming the setting.
    """
    from .bus.dramatiq import DramatiqEventBus
    from .storage.redis import RedisStorage
    from .store import Store

    settings = settings if settings is not None else load_settings()
    client = redis_client(settings)
    storage = RedisStorage(
        client,
        prefix=settings.prefix,
        partitions=settings.partitions,
        publisher=settings.publisher_options(),
    )
    bus = DramatiqEventBus(
        build_broker(settings),
        options=settings.delivery_options(),
        time_limit_ms=settings.time_limit_ms,
    )
    store = Store(storage, bus=bus, events=events, upgrades=upgrades)
    logging.getLogger("es_workers").debug("store built from settings %s", settings.shown())
    return store
