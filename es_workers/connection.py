"""The one connection spec: every option of a connection to Redis (where it is: a URL, a
Redis Cluster or Sentinel; TLS; the ACL user and password; timeouts; retries), read once
from the settings, and both clients built from it: `sync_client()` (redis-py, for `Store`,
the publisher, the workers and the Dramatiq broker) and `async_client()` (redis.asyncio,
for `AsyncStore`).

An option reaches both clients the same way, or is refused for both with a
ConfigurationError naming it: a URL's query may set only `URL_OPTIONS` (TLS files and
checks, the protocol, a client name, the pool size); the timeouts and retries are settings
(`ES_REDIS_CONNECT_TIMEOUT_MS`, `ES_REDIS_TIMEOUT_MS`), never a URL's. Part of the
composition root: only `wiring` builds clients through it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .errors import ConfigurationError
from .settings import Settings, env_name, redact_url, sentinel_addresses

log = logging.getLogger("es_workers.connection")

# redis-py retries a command whose connection failed this many times, backing off 50 ms
# doubling to 1 s with jitter: a blip or a Sentinel failover's first seconds pass unseen,
# while a Redis that stays down fails a call within about
# (RETRIES + 1) x (connect or command timeout) + 2 s.
REDIS_RETRIES = 3
REDIS_BACKOFF_BASE_S, REDIS_BACKOFF_CAP_S = 0.05, 1.0
HEALTH_CHECK_INTERVAL_S = 30  # a pooled connection idle that long is PINGed first


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise ValueError("must be true or false")


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError("must be a whole number >= 1")
    return int(text)


# The options a Redis URL's query may set, each parsed here and handed alike to redis-py
# and redis.asyncio, one Redis or a cluster. (`db`, `username` and `password` are the
# URL's own: settings.check_url and Settings check them.)
URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": _one_of("none", "optional", "required"),
    "ssl_check_hostname": _flag,
    "ssl_ciphers": str,
    "protocol": lambda text: int(_one_of("2", "3")(text)),
    "client_name": str,
    "max_connections": _positive,
}
URL_OWN = ("db", "username", "password")
# Query options that settings cover: refused, naming the setting to use instead.
SETTING_OF = {
    "socket_timeout": "redis_timeout_ms",
    "timeout": "redis_timeout_ms",
    "socket_connect_timeout": "redis_connect_timeout_ms",
}


def url_options(url: str, setting: str) -> tuple[str, dict[str, Any]]:
    """The URL without the query options es_workers passes itself, and those options
    parsed; ConfigurationError naming an option refused (never quoting the URL)."""
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in URL_OWN:
            kept.append((name, value))
            continue
        parse = URL_OPTIONS.get(name)
        if parse is None:
            raise ConfigurationError(f"{env_name(setting)}: {refusal(name)}")
        try:
            options[name] = parse(value)
        except ValueError as error:
            shown = "***" if "password" in name else repr(value)
            raise ConfigurationError(
                f"{env_name(setting)}: the URL's option {name}={shown} {error}") from None
    return urlunsplit(parts._replace(query=urlencode(kept))), options


def refusal(name: str) -> str:
    """Why the URL's query option `name` is refused, and what to do instead."""
    covered = SETTING_OF.get(name)
    if covered is not None:
        return (f"the URL's option {name} is not taken: set {env_name(covered)} "
                "(the same for every client)")
    return (f"the URL's option {name} is not taken: the redis-py and redis.asyncio "
            f"clients are built alike, from these options only: "
            f"{', '.join(sorted(URL_OPTIONS))} (timeouts and retries are settings)")


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


def redis_backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=REDIS_BACKOFF_CAP_S, base=REDIS_BACKOFF_BASE_S)


def _cluster(options: dict[str, Any]) -> dict[str, Any]:
    """`options` for a RedisCluster client: redis-py's drops `health_check_interval` (its
    nodes' connections never take it), so the asyncio one goes without it too."""
    return {name: value for name, value in options.items() if name != "health_check_interval"}


@dataclass(frozen=True)
class RedisConnection:
    """Where a Redis is and how to talk to it; `sync_client()` and `async_client()` build
    the two clients of the same server, with the same options.

    `url` (None: Sentinel, else the embedded fakeredis) is kept without the query options
    of `options` (see `URL_OPTIONS`); `setting` names where it came from, for messages.
    """

    url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    setting: str = "redis_url"
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    db: int = 0
    cluster: Literal["auto", "true", "false"] = "false"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 2.0
    timeout_s: float = 5.0
    retries: int = REDIS_RETRIES

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisConnection:
        """The events' Redis: Sentinel's primary, `redis_url` (one Redis or a cluster), or
        the embedded one; with the credentials, timeouts and retries of the settings."""
        password = settings.redis_password
        common: dict[str, Any] = {
            "username": settings.redis_username,
            "password": password.get_secret_value() if password is not None else None,
            "connect_timeout_s": settings.redis_connect_timeout_ms / 1000,
            "timeout_s": settings.redis_timeout_ms / 1000,
        }
        if settings.redis_sentinels is not None:
            return cls(sentinels=tuple(sentinel_addresses(settings.redis_sentinels)),
                       sentinel_master=settings.redis_sentinel_master, db=settings.redis_db,
                       **common)
        if settings.redis_url is None:
            return cls(**common)
        url, options = url_options(settings.redis_url, "redis_url")
        if settings.redis_cluster == "true" and urlsplit(url).scheme == "unix":
            raise ConfigurationError(
                f"{env_name('redis_cluster')}=true: a Redis Cluster is reached over TCP "
                f"(redis:// or rediss://), not through a unix socket")
        return cls(url=url, options=options, cluster=settings.redis_cluster, **common)

    @classmethod
    def for_url(cls, url: str, settings: Settings, setting: str) -> RedisConnection:
        """Another Redis (`setting`: e.g. broker_url), with the timeouts and retries of the
        settings and the credentials of its URL only."""
        bare, options = url_options(url, setting)
        return cls(url=bare, options=options, setting=setting,
                   connect_timeout_s=settings.redis_connect_timeout_ms / 1000,
                   timeout_s=settings.redis_timeout_ms / 1000)

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded fakeredis (no URL, no Sentinel)."""
        return self.url is None and not self.sentinels

    def client_options(self, *, asynchronous: bool = False) -> dict[str, Any]:
        """Timeouts and retries of every connection (the retry class of the half)."""
        retry_class = AsyncRetry if asynchronous else Retry
        return {
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": self.timeout_s,
            "retry": retry_class(redis_backoff(), self.retries),
            "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        }

    def credentials(self) -> dict[str, str]:
        """The ACL user and password given (Settings checked that a URL holding them
        too holds the same ones: redis-py would take the URL's)."""
        found = {"username": self.username, "password": self.password}
        return {name: value for name, value in found.items() if value is not None}

    def on_cluster(self) -> bool:
        """Whether the server is a Redis Cluster (`redis_cluster`; auto: ask it). With
        `redis_cluster=true`, a server that answers it is not one is refused here, for
        both halves alike (redis-py would find out as it is built, redis.asyncio at its
        first command), as is a database other than 0 (a cluster has only that one)."""
        if self.url is None or self.cluster == "false":
            return False
        found = self.cluster_enabled()
        if self.cluster == "true" and found is False:
            raise self._not_a_cluster("its INFO says cluster_enabled:0")
        if not (found or self.cluster == "true"):
            return False
        parts = urlsplit(self.url)
        path_db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if (path_db or "0") != "0" or dict(parse_qsl(parts.query)).get("db", "0") != "0":
            raise ConfigurationError(
                f"{env_name(self.setting)} names a database other than 0 on a Redis "
                "Cluster, which has database 0 only: drop it from the URL")
        return True

    def cluster_enabled(self) -> bool | None:
        """Whether the Redis at `url` is a node of a Redis Cluster (its INFO says so);
        None if it does not answer, or denies INFO to an ACL user (`redis_cluster=true`
        then says it is one; auto takes it for one Redis)."""
        assert self.url is not None
        parts, url = urlsplit(self.url), self.url
        if parts.scheme != "unix":  # database 0: a cluster node refuses SELECT
            login = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "db"])
            url = parts._replace(path="/0", query=login).geturl()
        with redis.Redis.from_url(url, socket_connect_timeout=self.connect_timeout_s,
                                  socket_timeout=self.timeout_s, **self.options,
                                  **self.credentials()) as probe:
            try:
                return bool(probe.info("cluster").get("cluster_enabled"))
            except redis.ResponseError as error:  # INFO may be denied to an ACL user
                if self.cluster != "true":
                    log.info("cannot ask %s whether it is a cluster (%s): taking it for one "
                             "Redis; set %s=true if it is", redact_url(self.url), error,
                             env_name("redis_cluster"))
                return None
            except redis.RedisError:  # unreachable: the storage reports it, naming the server
                return None

    def sync_client(self) -> redis.Redis | RedisCluster:
        """The redis-py client: Sentinel's primary (it follows a failover), a RedisCluster,
        one Redis, or the embedded fakeredis."""
        if self.sentinels:
            client: redis.Redis = self._sentinel_primary(
                redis.sentinel.Sentinel, self.client_options())
            return client
        if self.url is None:
            server = embedded_server()  # first: it says what to do when fakeredis is missing
            import fakeredis

            return fakeredis.FakeRedis(server=server)
        options = {**self.client_options(), **self.options, **self.credentials()}
        if self.on_cluster():
            try:
                return RedisCluster.from_url(self.url, **_cluster(options))
            except redis.exceptions.RedisClusterException as error:
                raise self._not_a_cluster(error) from None
        return redis.Redis.from_url(self.url, **options)

    def async_client(self) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
        """`sync_client`'s redis.asyncio twin: the same server, the same options."""
        if self.sentinels:
            client: redis.asyncio.Redis = self._sentinel_primary(
                redis.asyncio.sentinel.Sentinel, self.client_options(asynchronous=True))
            return client
        if self.url is None:
            server = embedded_server()
            import fakeredis

            return fakeredis.FakeAsyncRedis(server=server)
        options = {**self.client_options(asynchronous=True), **self.options,
                   **self.credentials()}
        if self.on_cluster():
            try:
                return redis.asyncio.RedisCluster.from_url(self.url, **_cluster(options))
            except redis.exceptions.RedisClusterException as error:
                raise self._not_a_cluster(error) from None
        return redis.asyncio.Redis.from_url(self.url, **options)

    def _sentinel_primary(self, sentinel_class: Any, options: dict[str, Any]) -> Any:
        """The primary's client from `sentinel_class` (redis-py's or redis.asyncio's)."""
        # cast: redis-py typed Sentinel only from 8.2; this reads the same on both.
        sentinel = cast(Any, sentinel_class)(
            list(self.sentinels),
            sentinel_kwargs={key: options[key] for key in ("socket_connect_timeout",
                                                           "socket_timeout")},
            **options,
        )
        return sentinel.master_for(self.sentinel_master, db=self.db, **self.credentials())

    def _not_a_cluster(self, error: Exception | str) -> ConfigurationError:
        return ConfigurationError(
            f"{env_name(self.setting)}={redact_url(self.url)!r} does not answer as a Redis "
            f"Cluster ({error}); with one Redis set {env_name('redis_cluster')}=auto or false"
        )
