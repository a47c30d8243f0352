"""Wrapped data keys of personal fields in Redis (`encryption.KeyStore`): the only module
that names these keys. All of them share the hash tag `{<prefix>:keys}`, so `keyring.lua`
runs on one Redis Cluster slot:

- `<prefix>:{<prefix>:keys}:data`: hash, data key ID -> wrapped key (`encryption`)
- `<prefix>:{<prefix>:keys}:subjects`: hash, subject -> its data key ID
- `<prefix>:{<prefix>:keys}:forgotten`: hash, subject -> how many of its keys were
  destroyed (the forgotten-subjects record)
- `<prefix>:{<prefix>:keys}:version`: a counter raised by each destroyed key (caches
  check it)

A destroyed key's earlier HSET stays in the append-only file until it is rewritten, so a
forget asks the server for `BGREWRITEAOF` (when AOF is on; refused rewrites are ignored: one
already running or an ACL user without the command). Replicas rewrite on their own schedule;
backups taken before a forget still hold the key (see the README).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import redis

from .cluster import is_cluster
from .failures import server_name, translated
from .keys import RedisKeys, text
from .layouts import KEYRING
from .scripts import AsyncScript, Script


def keyring_keys(prefix: str) -> list[str]:
    RedisKeys(prefix, 1)  # validates the prefix
    tag = f"{prefix}:{{{prefix}:keys}}"
    return KEYRING.keys.pack(data=f"{tag}:data", subjects=f"{tag}:subjects",
                             forgotten=f"{tag}:forgotten", version=f"{tag}:version")


def _create(subject: str, key_id: str, wrapped: str) -> list[Any]:
    return KEYRING.args.pack(op="create", subject_or_key_id=subject, key_id_or_old=key_id,
                             wrapped_or_new=wrapped)


def _forget(subject: str) -> list[Any]:
    return KEYRING.args.pack(op="forget", subject_or_key_id=subject)


def _rewrap(key_id: str, old: str, new: str) -> list[Any]:
    return KEYRING.args.pack(op="rewrap", subject_or_key_id=key_id, key_id_or_old=old,
                             wrapped_or_new=new)


def _pair(reply: Any) -> tuple[str, str]:
    key_id, wrapped = reply
    return text(key_id), text(wrapped)


class RedisKeyStore:
    """The wrapped data keys of a prefix on a `redis.Redis` or `RedisCluster`. Redis
    failures raise StorageUnavailableError, as every storage call does."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.keys = keyring_keys(prefix)
        self.server = server_name(client)
        self._script = Script(client, "keyring")
        self._on_cluster = is_cluster(client)

    def subject_key(self, subject: str) -> tuple[str, str] | None:
        with translated(self.server, "reading a data key"):
            key_id = self.client.hget(self.keys[1], subject)
            if key_id is None:
                return None
            wrapped = self.client.hget(self.keys[0], key_id)
        return None if wrapped is None else (text(key_id), text(wrapped))

    def create_key(self, subject: str, key_id: str, wrapped: str) -> tuple[str, str]:
        # Retried after a lost reply, it finds the key it made and answers it.
        with translated(self.server, "making a data key", writing=True):
            return _pair(self._script(self.keys, _create(subject, key_id, wrapped)))

    def data_keys(self, key_ids: Sequence[str]) -> list[str | None]:
        with translated(self.server, "reading data keys"):
            found = self.client.hmget(self.keys[0], key_ids)
        return [None if w is None else text(w) for w in found]

    def forget(self, subject: str) -> int:
        with translated(self.server, f"forgetting {subject!r}", writing=True):
            count = int(self._script(self.keys, _forget(subject)))
        self._rewrite_aof()
        return count

    def _rewrite_aof(self) -> None:
        """Asks the server holding the keys to rewrite its AOF (best effort)."""
        options: dict[str, Any] = {}
        if self._on_cluster:  # the master holding the keys
            options["target_nodes"] = self.client.get_node_from_key(self.keys[0])
        try:
            info = self.client.execute_command("INFO", "persistence", **options)
            if isinstance(info, dict) and info.get("aof_enabled"):
                self.client.execute_command("BGREWRITEAOF", **options)
        except redis.RedisError:
            pass  # a rewrite running already, INFO / BGREWRITEAOF denied by ACL, Redis gone

    def version(self) -> int:
        with translated(self.server, "reading the data keys' version"):
            return int(self.client.get(self.keys[3]) or 0)

    def wrapped_keys(self) -> Iterator[tuple[str, str]]:
        with translated(self.server, "listing data keys"):
            found = list(self.client.hscan_iter(self.keys[0], count=500))
        for key_id, wrapped in found:
            yield text(key_id), text(wrapped)

    def rewrap(self, key_id: str, old: str, new: str) -> bool:
        with translated(self.server, "re-wrapping a data key", writing=True):
            return bool(self._script(self.keys, _rewrap(key_id, old, new)))

    def forgotten(self) -> dict[str, int]:
        """Every forgotten subject, with how many of its keys were destroyed."""
        with translated(self.server, "reading forgotten subjects"):
            found = self.client.hgetall(self.keys[2])
        return {text(k): int(v) for k, v in found.items()}


class AsyncRedisKeyStore:
    """`RedisKeyStore` through a `redis.asyncio` client: the same errors (Redis failures
    raise StorageUnavailableError)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.keys = keyring_keys(prefix)
        self.server = server_name(client)
        self._script = AsyncScript(client, "keyring")

    async def subject_key(self, subject: str) -> tuple[str, str] | None:
        with translated(self.server, "reading a data key"):
            key_id = await self.client.hget(self.keys[1], subject)
            if key_id is None:
                return None
            wrapped = await self.client.hget(self.keys[0], key_id)
        return None if wrapped is None else (text(key_id), text(wrapped))

    async def create_key(self, subject: str, key_id: str, wrapped: str) -> tuple[str, str]:
        with translated(self.server, "making a data key", writing=True):
            return _pair(await self._script(self.keys, _create(subject, key_id, wrapped)))

    async def data_keys(self, key_ids: Sequence[str]) -> list[str | None]:
        with translated(self.server, "reading data keys"):
            found = await self.client.hmget(self.keys[0], key_ids)
        return [None if w is None else text(w) for w in found]

    async def forget(self, subject: str) -> int:
        with translated(self.server, f"forgetting {subject!r}", writing=True):
            count = int(await self._script(self.keys, _forget(subject)))
        try:  # as RedisKeyStore._rewrite_aof (one Redis; a cluster's forget goes there)
            info = await self.client.info("persistence")
            if isinstance(info, dict) and info.get("aof_enabled"):
                await self.client.bgrewriteaof()
        except redis.RedisError:
            pass  # as RedisKeyStore's: a rewrite running, denied by ACL, Redis gone
        return count

    async def version(self) -> int:
        with translated(self.server, "reading the data keys' version"):
            return int(await self.client.get(self.keys[3]) or 0)

    async def wrapped_keys(self) -> AsyncIterator[tuple[str, str]]:
        with translated(self.server, "listing data keys"):
            found = [pair async for pair in self.client.hscan_iter(self.keys[0], count=500)]
        for key_id, wrapped in found:
            yield text(key_id), text(wrapped)

    async def rewrap(self, key_id: str, old: str, new: str) -> bool:
        with translated(self.server, "re-wrapping a data key", writing=True):
            return bool(await self._script(self.keys, _rewrap(key_id, old, new)))
