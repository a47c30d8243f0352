"""Wiring: turns settings into the parts of a Store (Redis client, RedisStorage, Dramatiq
broker, DramatiqEventBus), in one place. `Store.from_settings` calls `build_parts`.

Reading settings, reaching Redis and checking the stored partitions all happen here, so a
misconfigured process fails at start-up with a message naming the setting.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import redis
from redis.cluster import RedisCluster

from .errors import ConfigurationError
from .redis.cluster import is_cluster
from .redis.storage import RedisStorage
from .settings import Settings, env_name, load_settings, redact_url
from .workers.broker import WakingRedisBroker
from .workers.bus import DramatiqEventBus
from .workers.middleware import WorkerProcessSetup

log = logging.getLogger("es_workers.wiring")

_embedded_lock = threading.Lock()
_embedded: Any = None  # fakeredis.FakeServer, made on first use


def embedded_server() -> Any:
    """The process's embedded Redis (fakeredis), shared by every Store built without
    `redis_url`, as one real server would be. It lives in this process only."""
    global _embedded
    try:
        import fakeredis  # an optional dependency: only the embedded default needs it
    except ImportError as error:
        raise ConfigurationError(
            f"{env_name('redis_url')} is not set and the embedded Redis needs fakeredis: "
            f"set {env_name('redis_url')}, or pip install 'es_workers[demo]' ({error})"
        ) from None
    with _embedded_lock:
        if _embedded is None:
            _embedded = fakeredis.FakeServer(version=(7, 0))
        return _embedded


def redis_client(settings: Settings) -> redis.Redis | RedisCluster:
    """A client of the Redis the settings name: a RedisCluster on a Redis Cluster."""
    if settings.redis_url is None:
        import fakeredis

        client: redis.Redis = fakeredis.FakeRedis(server=embedded_server())
        return client
    if on_cluster(settings):
        try:
            return RedisCluster.from_url(settings.redis_url)
        except redis.exceptions.RedisClusterException as error:
            raise ConfigurationError(
                f"{env_name('redis_url')}={redact_url(settings.redis_url)!r} does not answer "
                f"as a Redis Cluster ({error}); with one Redis set "
                f"{env_name('redis_cluster')}=auto or false"
            ) from None
    return redis.Redis.from_url(settings.redis_url)


def on_cluster(settings: Settings) -> bool:
    """Whether the events live on a Redis Cluster (`redis_cluster`; auto: ask the server)."""
    if settings.redis_url is None or settings.redis_cluster == "false":
        return False
    return settings.redis_cluster == "true" or cluster_enabled(settings.redis_url)


def cluster_enabled(url: str) -> bool:
    """Whether the Redis at `url` is a node of a Redis Cluster (its INFO says so)."""
    with redis.Redis.from_url(url) as probe:
        try:
            return bool(probe.info("cluster").get("cluster_enabled"))
        except redis.ResponseError as error:  # INFO may be denied to an ACL user
            log.info("cannot ask %s whether it is a cluster (%s): taking it for one Redis; "
                     "set %s=true if it is", redact_url(url), error, env_name("redis_cluster"))
            return False


def build_broker(settings: Settings, *, cluster: bool = False) -> dramatiq.Broker:
    """The Dramatiq broker the settings name, with the worker-process setup middleware.
    `cluster`: the events live on a Redis Cluster, where Dramatiq's RedisBroker cannot run,
    so the broker must be named and be RabbitMQ or a standalone Redis."""
    if cluster:
        check_cluster_broker(settings.broker_url)
    url = settings.broker_url or settings.redis_url
    scheme = urlsplit(url).scheme if url else None
    broker: dramatiq.Broker
    if scheme is None:
        import fakeredis

        broker = WakingRedisBroker(
            client=fakeredis.FakeRedis(server=embedded_server()),
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
        broker = WakingRedisBroker(url=url, namespace=settings.dramatiq_namespace)
    broker.add_middleware(WorkerProcessSetup(settings.log_level, settings.metrics_port))
    return broker


def check_cluster_broker(broker_url: str | None) -> None:
    if broker_url is None:
        raise ConfigurationError(
            f"{env_name('redis_url')} names a Redis Cluster, where Dramatiq's Redis broker "
            f"cannot run: set {env_name('broker_url')} to RabbitMQ (amqp://..., pip install "
            "'es_workers[rabbitmq]') or to a standalone Redis (redis://...)"
        )
    if urlsplit(broker_url).scheme in ("redis", "rediss", "unix") and cluster_enabled(
        broker_url
    ):
        raise ConfigurationError(
            f"{env_name('broker_url')}={redact_url(broker_url)!r} is a Redis Cluster node, "
            "where Dramatiq's Redis broker cannot run: name RabbitMQ (amqp://...) or a "
            "standalone Redis"
        )


def build_parts(settings: Settings | None = None) -> tuple[RedisStorage, DramatiqEventBus]:
    """The storage and bus the settings describe (read from `ES_...` when None)."""
    settings = settings if settings is not None else load_settings()
    if settings.redis_url is None:
        log.warning(
            "%s is not set: events live in an embedded Redis inside this process and are "
            "lost when it exits (set %s to keep them)", env_name("redis_url"),
            env_name("redis_url"),
        )
    client = redis_client(settings)
    broker = build_broker(settings, cluster=is_cluster(client))  # before anything is written
    storage = RedisStorage(
        client,
        prefix=settings.prefix,
        partitions=settings.partitions,
        publisher=settings.publisher_options(),
    )
    bus = DramatiqEventBus(
        broker,
        options=settings.delivery_options(),
        time_limit_ms=settings.time_limit_ms,
    )
    log.debug("store built from settings %s", settings.shown())
    return storage, bus
