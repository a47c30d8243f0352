"""Redis failures as es_workers errors, in one place.

Store calls that reach Redis (the reads and writes of RedisStorage and AsyncRedisStorage,
the subscriber state a store asks about, admin commands) run inside `translated(...)`:
redis-py's connection and timeout errors (redis.asyncio raises the same ones), and the
refusals of a server that is failing over (READONLY, MASTERDOWN, a WAIT on a master just
demoted) or loading (LOADING),
become `StorageUnavailableError`; OOM becomes `StorageFullError`. Other errors pass
through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from ..errors import ConfigurationError, StorageFullError, StorageUnavailableError

# Errors that say the server cannot serve now, not that the command is wrong. BusyLoading
# is a ConnectionError in redis-py.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
)


REPLICA_NOW = "cannot be used with replica instances"
"""What Redis answers a WAIT or WAITAOF sent to a replica: a master that a failover
demoted between a write and its WAIT."""


def server_name(client: Any) -> str:
    """Which Redis a client talks to, for messages: `host:port/db`, `user@host:port/db`,
    `sentinel master 'name'` or `cluster host:port,...`. Never a password."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # RedisCluster: per-node pools
        nodes = getattr(client, "startup_nodes", None) or {}  # names, or ClusterNodes
        names = sorted(getattr(node, "name", node) for node in nodes)
        return "cluster " + ",".join(names) if names else type(client).__name__
    service = getattr(pool, "service_name", None)
    if service:
        return f"sentinel master {service!r}"
    options = getattr(pool, "connection_kwargs", {})
    if "path" in options:
        return f"unix:{options['path']}"
    user = f"{options['username']}@" if options.get("username") else ""
    return f"{user}{options.get('host', '?')}:{options.get('port', '?')}/{options.get('db', 0)}"


@contextlib.contextmanager
def translated(server: str, doing: str, *, writing: bool = False) -> Iterator[None]:
    """Raises StorageUnavailableError (or StorageFullError) for Redis failures in the block.

    `writing`: the block sends a write that a lost connection may have applied, so a
    connection failure leaves its outcome unknown."""
    try:
        yield
    except redis.exceptions.OutOfMemoryError as error:
        raise StorageFullError(server, error) from error
    except redis.AuthenticationError as error:  # a ConnectionError in redis-py, but no outage
        raise ConfigurationError(credentials_refused(server, error)) from None
    except redis.exceptions.InvalidResponse as error:  # its text: a few bytes of the reply
        raise ConfigurationError(
            f"{server} did not answer as a Redis server ({error}): check the host and port "
            "of ES_REDIS_URL (another service, e.g. HTTP, listening there?) and its scheme "
            "(rediss:// for TLS only)") from None
    except redis.ResponseError as error:
        if REPLICA_NOW in str(error):
            # WAIT (or WAITAOF) after the write, on a master demoted in between by a
            # failover: the write may have run there and be lost with it.
            raise StorageUnavailableError(
                server, error, outcome_unknown=writing, doing=doing) from error
        if "DB index is out of range" not in str(error):
            raise
        raise ConfigurationError(
            f"Redis {server} has no such database ({error}): check the database "
            "number in ES_REDIS_URL (or ES_REDIS_DB); a Redis has 16 (0-15) unless its "
            "`databases` setting says more, a Redis Cluster only 0") from None
    except UNAVAILABLE as error:
        # READONLY and MASTERDOWN are refusals: the command did not run. But redis-py may
        # have retried it after a lost connection, so a write's outcome stays unknown.
        raise StorageUnavailableError(
            server, error, outcome_unknown=writing, doing=doing
        ) from error


def credentials_refused(server: str, error: redis.AuthenticationError) -> str:
    """What to check when Redis refuses a connection's credentials (never quoting them)."""
    text = str(error).lower()
    if "required" in text or "already authenticated" in text:  # NOAUTH: none was given
        return (f"Redis {server} needs a password ({error}): set ES_REDIS_PASSWORD (and "
                "ES_REDIS_USERNAME for an ACL user), or give it in ES_REDIS_URL")
    return (f"Redis {server} refused the credentials ({error}): check ES_REDIS_PASSWORD and "
            "ES_REDIS_USERNAME, or those in ES_REDIS_URL")


def appending(server: str, entity_type: str,
              entity_id: str) -> contextlib.AbstractContextManager[None]:
    """`translated` around an append: a connection lost leaves its outcome unknown."""
    return translated(server, f"appending to {entity_type} {entity_id!r}", writing=True)
