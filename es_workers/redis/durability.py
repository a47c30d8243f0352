"""What an append waits for before it returns, and the start-up checks of the server.

By default an append returns once the primary ran the script (and, with `appendfsync
always`, wrote it to its append-only file). `Durability(replicas=N)` also sends `WAIT N
timeout` on the same connection, right after the script in one pipeline: the append returns
once N replicas have it, else raises DurabilityError. `aof=True` sends `WAITAOF` instead,
which Redis has from 7.2 on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from ..errors import ConfigurationError, DurabilityError
from .keys import text

log = logging.getLogger("es_workers.durability")

WAITAOF_SINCE = (7, 2)


@dataclass(frozen=True)
class Durability:
    """`replicas`: replicas that must confirm each append; `timeout_ms`: how long to wait
    for them; `aof`: also wait for the primary's (and those replicas') append-only file."""

    replicas: int = 0
    timeout_ms: int = 1000
    aof: bool = False

    @property
    def waits(self) -> bool:
        return self.replicas > 0 or self.aof

    def command(self) -> tuple[Any, ...]:
        """The command sent after each append, on its connection."""
        if self.aof:
            return ("WAITAOF", 1, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, answer: Any, entity_type: str, entity_id: str, first: int,
              last: int) -> None:
        """Raises DurabilityError when the answer to `command()` confirms too little."""
        if self.aof:
            local, replicas = (int(n) for n in answer)
            if local < 1:
                raise DurabilityError(entity_type, entity_id, first, last, wanted=1,
                                      confirmed=local, what="append-only file fsyncs")
        else:
            replicas = int(answer)
        if replicas < self.replicas:
            raise DurabilityError(entity_type, entity_id, first, last,
                                  wanted=self.replicas, confirmed=replicas)


def server_version(client: redis.Redis | RedisCluster) -> tuple[int, ...]:
    """The server's version from HELLO (allowed to users without @dangerous, unlike INFO)."""
    answer = client.execute_command("HELLO")  # type: ignore[no-untyped-call]
    fields = answer if isinstance(answer, dict) else dict(zip(answer[::2], answer[1::2],
                                                              strict=False))
    values = {text(name): value for name, value in fields.items()}
    return tuple(int(part) for part in text(values["version"]).split(".")[:3])


def check_server(client: redis.Redis | RedisCluster, durability: Durability, server: str) -> None:
    """At start-up: refuses an eviction policy that could delete events, and durability the
    server cannot give, each with a ConfigurationError naming the server."""
    _check_eviction(client, server)
    if durability.aof:
        version = server_version(client)
        if version < WAITAOF_SINCE:
            shown = ".".join(map(str, version))
            raise ConfigurationError(
                f"ES_WAIT_AOF needs WAITAOF, which Redis {server} (version {shown}) lacks: "
                "it came in Redis 7.2. Upgrade Redis or unset ES_WAIT_AOF"
            )
    if durability.replicas:
        try:
            client.wait(0, 0)
        except redis.ResponseError as error:
            raise ConfigurationError(
                f"ES_WAIT_REPLICAS={durability.replicas}: Redis {server} cannot WAIT "
                f"for replicas ({error})"
            ) from None


def _check_eviction(client: redis.Redis | RedisCluster, server: str) -> None:
    try:
        answer = client.config_get("maxmemory-policy")
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
