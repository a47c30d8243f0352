"""Wiring: turns settings into the parts of a Store (Redis clients, RedisStorage,
AsyncRedisStorage, Dramatiq broker, DramatiqEventBus), in one place: with `settings`,
`connection` and `app`, the composition root. `Store.from_settings` (es_workers.app) calls
`build_parts`, `AsyncStore.from_settings` `build_async_storage`; every Redis client comes
from the one connection spec (`connection.RedisConnection`).

Reading settings, reaching Redis and checking the stored partitions all happen here, so a
misconfigured process fails at start-up with a message naming the setting.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import redis
import redis.asyncio
from redis.cluster import RedisCluster

from .connection import RedisConnection, embedded_server
from .encryption import MasterKeys
from .errors import ConfigurationError
from .redis.async_storage import AsyncRedisStorage
from .redis.cluster import is_cluster
from .redis.storage import RedisStorage
from .retention import HotWindow
from .settings import Settings, env_name, load_settings, redact_url
from .workers.broker import WakingRedisBroker
from .workers.bus import DramatiqEventBus
from .workers.middleware import WorkerProcessSetup

log = logging.getLogger("es_workers.wiring")


def redis_client(settings: Settings) -> redis.Redis | RedisCluster:
    """The redis-py client of the events' Redis the settings name (through Sentinel, from
    redis_url, a RedisCluster on a Redis Cluster, or embedded): `RedisConnection`'s."""
    return RedisConnection.from_settings(settings).sync_client()


def async_redis_client(settings: Settings) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """`redis_client`'s asyncio twin, from the same `RedisConnection`: the same server
    (through Sentinel, a cluster, or the embedded one too) and options."""
    return RedisConnection.from_settings(settings).async_client()


def client_from_url(url: str, settings: Settings, setting: str = "broker_url") -> redis.Redis:
    """A redis-py client of one Redis at `url` (the `setting` it came from), with the
    timeouts and retries of the settings."""
    client = RedisConnection.for_url(url, settings, setting).sync_client()
    assert isinstance(client, redis.Redis)  # for_url never asks for a cluster
    return client


# A RabbitMQ that turns the login or the vhost away is asked this many times, a second
# apart (a user or vhost being created as the container starts), then refused.
BROKER_REFUSAL_TRIES = 3
BROKER_REFUSAL_PAUSE_S = 1.0


def check_broker(broker: dramatiq.Broker, url: str | None) -> None:
    """Refuses, with a ConfigurationError naming what to check, a RabbitMQ broker that
    refuses this process's login or vhost BROKER_REFUSAL_TRIES times: Dramatiq would retry
    it forever, logging every try. An unreachable RabbitMQ passes: an outage ends, and
    Dramatiq rides it out. Other brokers pass (a Redis refuses where the store opens)."""
    if url is None or urlsplit(url).scheme not in ("amqp", "amqps"):
        return
    import pika.exceptions  # type: ignore[import-untyped]  # the rabbitmq extra, as here

    pika_log = logging.getLogger("pika")
    level = pika_log.level
    pika_log.setLevel(logging.CRITICAL)  # ~20 lines and a traceback per try: ours is one
    try:
        _connect_or_refuse(broker, url, pika.exceptions)
    finally:
        pika_log.setLevel(level)


def _connect_or_refuse(broker: dramatiq.Broker, url: str, errors: Any) -> None:
    """`check_broker`'s tries; `errors`: pika's exceptions module."""
    what = ""
    for attempt in range(1, BROKER_REFUSAL_TRIES + 1):
        try:
            getattr(broker, "connection")  # noqa: B009  # RabbitmqBroker connects on access
            return
        except errors.ProbableAccessDeniedError:
            what = (f"access to vhost {urlsplit(url).path[1:] or '/'!r} was denied (no such "
                    "vhost, or the user has no permission on it)")
        except (errors.ProbableAuthenticationError, errors.AuthenticationError):
            what = "the login was refused (user or password)"
        except errors.AMQPConnectionError:
            return  # unreachable: an outage, not a misconfiguration
        if attempt < BROKER_REFUSAL_TRIES:
            time.sleep(BROKER_REFUSAL_PAUSE_S)
    raise ConfigurationError(
        f"RabbitMQ {redact_url(url)}: {what}, {BROKER_REFUSAL_TRIES} times: check the user, "
        f"password and vhost of {env_name('broker_url')}")


def build_broker(settings: Settings, *, cluster: bool = False) -> dramatiq.Broker:
    """The Dramatiq broker the settings name, with the worker-process setup middleware.
    `cluster`: the events live on a Redis Cluster, where Dramatiq's RedisBroker cannot run,
    so the broker must be named and be RabbitMQ or a standalone Redis."""
    if cluster:
        check_cluster_broker(settings.broker_url, settings)
    url = settings.broker_url
    scheme = urlsplit(url).scheme if url else None
    broker: dramatiq.Broker
    if url is None and settings.uses_redis:  # the Redis of the events, the same way
        broker = WakingRedisBroker(
            client=redis_client(settings), namespace=settings.dramatiq_namespace
        )
    elif url is None:
        server = embedded_server()  # first: it says what to do when fakeredis is missing
        import fakeredis

        broker = WakingRedisBroker(
            client=fakeredis.FakeRedis(server=server),
            namespace=settings.dramatiq_namespace,
        )
    elif scheme in ("amqp", "amqps"):
        try:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker  # needs pika: an extra
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
        broker = WakingRedisBroker(
            client=client_from_url(url, settings), namespace=settings.dramatiq_namespace
        )
    broker.add_middleware(
        WorkerProcessSetup(settings.log_level, settings.metrics_port, settings.log_format)
    )
    return broker


def check_cluster_broker(broker_url: str | None, settings: Settings) -> None:
    if broker_url is None:
        raise ConfigurationError(
            f"{env_name('redis_url')} names a Redis Cluster, where Dramatiq's Redis broker "
            f"cannot run: set {env_name('broker_url')} to RabbitMQ (amqp://..., pip install "
            "'es_workers[rabbitmq]') or to a standalone Redis (redis://...)"
        )
    if urlsplit(broker_url).scheme in ("redis", "rediss", "unix") and RedisConnection.for_url(
        broker_url, settings, "broker_url"
    ).cluster_enabled():
        raise ConfigurationError(
            f"{env_name('broker_url')}={redact_url(broker_url)!r} is a Redis Cluster node, "
            "where Dramatiq's Redis broker cannot run: name RabbitMQ (amqp://...) or a "
            "standalone Redis"
        )


def build_parts(
    settings: Settings | None = None, *, logger: logging.Logger | None = None
) -> tuple[RedisStorage, DramatiqEventBus]:
    """The storage and bus the settings describe (read from `ES_...` when None); `logger`
    (by default `es_workers.wiring`) receives the records of building them."""
    settings = settings if settings is not None else load_settings()
    logger = logger or log
    warn_where_events_live(settings, logger)
    client = redis_client(settings)
    broker = build_broker(settings, cluster=is_cluster(client))  # before anything is written
    storage = RedisStorage(
        client,
        prefix=settings.prefix,
        partitions=settings.partitions,
        publisher=settings.publisher_options(),
        durability=settings.durability(),
        max_event_bytes=settings.max_event_bytes,
        encryption=master_keys(settings),
        archive=postgres_archive(settings),
    )
    storage.hot_window = hot_window(settings)
    bus = DramatiqEventBus(
        broker,
        options=settings.delivery_options(),
        time_limit_ms=settings.time_limit_ms,
    )
    logger.debug("store built from settings %s", settings.shown())
    return storage, bus


def warn_where_events_live(settings: Settings, logger: logging.Logger) -> None:
    """Warns of settings that leave events somewhere else than one might think: Sentinel
    and a URL both set, or no Redis at all (an embedded one, lost at exit)."""
    if settings.redis_sentinels is not None and settings.redis_url is not None:
        logger.warning("%s is set: %s is ignored", env_name("redis_sentinels"),
                       env_name("redis_url"))
    if not settings.uses_redis:
        logger.warning(
            "%s is not set: events live in an embedded Redis inside this process and are "
            "lost when it exits (set %s to keep them)", env_name("redis_url"),
            env_name("redis_url"),
        )


def build_async_storage(
    settings: Settings | None = None, *, logger: logging.Logger | None = None
) -> AsyncRedisStorage:
    """The AsyncRedisStorage the settings describe: `build_parts`' storage, awaited (the
    same Redis, timeouts, retries, durability and warnings)."""
    settings = settings if settings is not None else load_settings()
    logger = logger or log
    warn_where_events_live(settings, logger)
    storage = AsyncRedisStorage(
        async_redis_client(settings), prefix=settings.prefix, partitions=settings.partitions,
        durability=settings.durability(), max_event_bytes=settings.max_event_bytes,
        encryption=master_keys(settings), archive=postgres_archive(settings, asyncio=True),
    )
    logger.debug("async storage built from settings %s", settings.shown())
    return storage


def master_keys(settings: Settings) -> MasterKeys | None:
    """The master keys of personal fields (`encryption_key`, older `encryption_keys`)."""
    if settings.encryption_key is None:
        return None
    older = settings.encryption_keys
    return MasterKeys(settings.encryption_key.get_secret_value(),
                      older.get_secret_value().split(",") if older is not None else ())


def postgres_archive(settings: Settings, *, asyncio: bool = False,
                     recorded: bool = False) -> Any:
    """The archive `archive_url` names, or None: a `PostgresArchive` of the prefix (with
    `asyncio` an `AsyncPostgresArchive`; with `recorded` the eventsourcing applications'
    `PostgresRecordedArchive`). It connects on first use, not here."""
    if settings.archive_url is None:
        return None
    try:
        # psycopg is an optional extra: imported only by an app that configures an archive.
        from .postgres import AsyncPostgresArchive, PostgresArchive, PostgresRecordedArchive
    except ImportError as error:
        raise ConfigurationError(
            f"{env_name('archive_url')} is set but the archive needs psycopg: pip install "
            f"'es_workers[archive]' ({error})") from None
    kind: type[Any] = (PostgresRecordedArchive if recorded else
                       AsyncPostgresArchive if asyncio else PostgresArchive)
    return kind(settings.archive_url.get_secret_value(), prefix=settings.prefix)


def recorded_archive(archive: object) -> Any:
    """The eventsourcing applications' archive (a `PostgresRecordedArchive`) beside the
    app's `archive` (ES_ARCHIVE_URL, or one built in code): the same PostgreSQL and prefix,
    made once; None when `archive` is not a `PostgresArchive` (or None)."""
    if archive is None:
        return None
    try:  # psycopg, an optional extra: without it `archive` is no PostgresArchive
        from .postgres import PostgresArchive, PostgresRecordedArchive
    except ImportError:
        return None
    return (archive.sibling(PostgresRecordedArchive) if isinstance(archive, PostgresArchive)
            else None)


def hot_window(settings: Settings) -> HotWindow:
    """The hot window of every entity type the app does not give its own."""
    age = settings.archive_after_age_ms
    return HotWindow(events=settings.archive_after,
                     age=timedelta(milliseconds=age) if age is not None else None)
