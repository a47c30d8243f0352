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

from .errors import ConfigurationError
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


def redis_client(settings: Settings) -> redis.Redis:
    if settings.redis_url is None:
        server = embedded_server()  # first: it says what to do when fakeredis is missing
        import fakeredis

        client: redis.Redis = fakeredis.FakeRedis(server=server)
        return client
    return redis.Redis.from_url(settings.redis_url)


def build_broker(settings: Settings) -> dramatiq.Broker:
    """The Dramatiq broker the settings name, with the worker-process setup middleware."""
    url = settings.broker_url or settings.redis_url
    scheme = urlsplit(url).scheme if url else None
    broker: dramatiq.Broker
    if scheme is None:
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
        broker = WakingRedisBroker(url=url, namespace=settings.dramatiq_namespace)
    broker.add_middleware(WorkerProcessSetup(settings.log_level, settings.metrics_port))
    return broker


def build_parts(settings: Settings | None = None) -> tuple[RedisStorage, DramatiqEventBus]:
    """The storage and bus the settings describe (read from `ES_...` when None)."""
    settings = settings if settings is not None else load_settings()
    if settings.redis_url is None:
        log.warning(
            "%s is not set: events live in an embedded Redis inside this process and are "
            "lost when it exits (set %s to keep them)", env_name("redis_url"),
            env_name("redis_url"),
        )
    storage = RedisStorage(
        redis_client(settings),
        prefix=settings.prefix,
        partitions=settings.partitions,
        publisher=settings.publisher_options(),
        max_event_bytes=settings.max_event_bytes,
    )
    bus = DramatiqEventBus(
        build_broker(settings),
        options=settings.delivery_options(),
        time_limit_ms=settings.time_limit_ms,
    )
    log.debug("store built from settings %s", settings.shown())
    return storage, bus
