"""Opening a Redis storage, written once for both halves: reading (or, on a new prefix,
recording) its number of partitions, then the start-up checks of the server (an eviction
policy that could delete events, durability the server cannot give).

The steps are a generator of client calls: `run_steps` sends them through a redis-py
client (`RedisStorage`), `run_steps_async` awaits them through a redis.asyncio one
(`AsyncRedisStorage`), so both open, check and refuse the same way. A Redis error reply
is thrown back into the steps, which decide what it means; any other error (Redis
unreachable) ends them and reaches the caller, which translates it (`failures.py`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from typing import Any, TypeAlias, TypeVar

import redis

from ..errors import ConfigurationError
from .durability import Durability
from .entries import DEFAULT_PARTITIONS, stored_partitions
from .keys import LAYOUT, RedisKeys, text

log = logging.getLogger("es_workers.durability")

T = TypeVar("T")
Call: TypeAlias = tuple[str, tuple[Any, ...]]
"""A client method's name and its arguments, e.g. ("hget", (key, field))."""
Steps: TypeAlias = Generator[Call, Any, T]
"""Client calls to make one after another; each answer is sent back in, a Redis error
reply thrown in; the generator's return value is the outcome."""

WAITAOF_SINCE = (7, 2)


def run_steps(steps: Steps[T], client: Any) -> T:
    """Runs the steps with a redis-py client (`redis.Redis` or `RedisCluster`)."""
    answer: Any = None
    error: redis.ResponseError | None = None
    with contextlib.closing(steps):  # a call that failed otherwise ends them
        while True:
            try:
                name, args = steps.throw(error) if error is not None else steps.send(answer)
            except StopIteration as done:
                outcome: T = done.value
                return outcome
            try:
                answer, error = getattr(client, name)(*args), None
            except redis.ResponseError as refused:
                answer, error = None, refused


async def run_steps_async(steps: Steps[T], client: Any) -> T:
    """`run_steps` with a redis.asyncio client, each call awaited."""
    answer: Any = None
    error: redis.ResponseError | None = None
    with contextlib.closing(steps):  # a call that failed otherwise ends them
        while True:
            try:
                name, args = steps.throw(error) if error is not None else steps.send(answer)
            except StopIteration as done:
                outcome: T = done.value
                return outcome
            try:
                answer, error = await getattr(client, name)(*args), None
            except redis.ResponseError as refused:
                answer, error = None, refused


def opening(prefix: str, partitions: int | None, durability: Durability,
            server: str) -> Steps[RedisKeys]:
    """The keys of `prefix` with the partitions Redis holds for it (recorded if missing;
    `partitions` None takes any, another number than the stored one is refused), once the
    server passed the start-up checks."""
    wanted = DEFAULT_PARTITIONS if partitions is None else partitions
    meta = RedisKeys(prefix, wanted).meta()  # validates before anything is written
    stored = yield "hget", (meta, "partitions")
    if stored is None:  # a new prefix; written only then: a full Redis refuses writes
        # The layout first: whoever sees the partitions sees it (never a false refusal).
        yield "hsetnx", (meta, "layout", LAYOUT)
        yield "hsetnx", (meta, "partitions", wanted)
        stored = yield "hget", (meta, "partitions")
    keys = stored_partitions(prefix, partitions, stored)
    layout = yield "hget", (meta, "layout")
    if layout is None:
        raise legacy_layout_error(prefix)
    yield from server_checks(durability, server)
    return keys


def legacy_layout_error(prefix: str) -> ConfigurationError:
    """The refusal of a prefix whose keys still carry the `{pN}` hash tags."""
    return ConfigurationError(
        f"prefix {prefix!r} was written by an earlier es_workers, whose keys carry the "
        "hash tags {pN} (shared by every prefix, and spread unevenly over a cluster's "
        "masters); this version does not read them. Stop its publishers and workers, then "
        f"run `es-workers migrate-keys --prefix {prefix}` (with ES_REDIS_URL set as for "
        "them) to rename its keys"
    )


def server_checks(durability: Durability, server: str) -> Steps[None]:
    """Refuses an eviction policy that could delete events, and durability the server
    cannot give, each with a ConfigurationError naming the server."""
    yield from _eviction_checked(server)
    if durability.aof:
        version = _version((yield "execute_command", ("HELLO",)))
        if version < WAITAOF_SINCE:
            shown = ".".join(map(str, version))
            raise ConfigurationError(
                f"ES_WAIT_AOF needs WAITAOF, which Redis {server} (version {shown}) lacks: "
                "it came in Redis 7.2. Upgrade Redis or unset ES_WAIT_AOF"
            )
    if durability.replicas:
        try:
            yield "wait", (0, 0)
        except redis.ResponseError as error:
            raise ConfigurationError(
                f"ES_WAIT_REPLICAS={durability.replicas}: Redis {server} cannot WAIT "
                f"for replicas ({error})"
            ) from None


def _eviction_checked(server: str) -> Steps[None]:
    try:
        answer = yield "config_get", ("maxmemory-policy",)
    except redis.ResponseError as error:  # NOPERM: CONFIG is @dangerous; fakeredis
        log.debug("cannot read maxmemory-policy of %s: %s", server, error)
        return
    policy = text(answer.get("maxmemory-policy") or "noeviction")
    if policy != "noeviction":
        raise ConfigurationError(
            f"Redis {server} has maxmemory-policy {policy!r}: it would delete events when "
            "memory fills up. Set maxmemory-policy noeviction (writes then fail with "
            "StorageFullError instead)"
        )


def _version(answer: Any) -> tuple[int, ...]:
    """The server's version from HELLO's answer (HELLO is allowed to users without
    @dangerous, unlike INFO)."""
    fields = answer if isinstance(answer, dict) else dict(zip(answer[::2], answer[1::2],
                                                              strict=False))
    values = {text(name): value for name, value in fields.items()}
    return tuple(int(part) for part in text(values["version"]).split(".")[:3])
