"""The one loader of the Lua scripts that sit beside this module (`<name>.lua`).

Each script's text is read once per process; a `Script` runs it by SHA and loads it into
the server only when the server does not know it (after a restart or SCRIPT FLUSH).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import hiredis
import redis
import redis.asyncio
from redis.client import NEVER_DECODE

from .cluster import (
    SLOT_MOVING,
    is_async_cluster,
    is_cluster,
    retried_while_slots_move,
    retried_while_slots_move_async,
)


@cache
def source(name: str) -> str:
    """The text of `<name>.lua`."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text()


class Script:
    """A Lua script of this package bound to a client (a `redis.Redis` or `RedisCluster`)."""

    def __init__(self, client: Any, name: str) -> None:
        self.name = name
        self._client = client
        self.sha: str = client.register_script(source(name)).sha
        self._on_cluster = is_cluster(client)

    def __call__(self, keys: list[str], args: list[Any], *, raw: bool = False) -> Any:
        """Runs the script. `raw`: its reply stays bytes whatever the client's
        decode_responses (a reply holding stream entries: a field that is not UTF-8 must
        fail its own entry where it is decoded, not the whole reply in redis-py)."""
        try:
            return self._loaded_evalsha(keys, args, raw)
        except SLOT_MOVING:
            # On a cluster, the script's slot is moving to another master: the server
            # refused it before running it, so it is sent again as it was.
            return retried_while_slots_move(lambda: self._loaded_evalsha(keys, args, raw))

    def _evalsha(self, keys: list[str], args: list[Any], raw: bool) -> Any:
        # EVALSHA directly: redis-py's Script.__call__ does the same with ~2 us more per
        # call, and this runs on every append.
        options: dict[str, Any] = {NEVER_DECODE: []} if raw else {}
        if self._on_cluster:
            # Naming the node: redis-py would hash every key twice to find it (all share
            # one slot), a fifth of an append's time on a cluster.
            options["target_nodes"] = self._client.get_node_from_key(keys[0])
        return self._client.execute_command(
            "EVALSHA", self.sha, len(keys), *keys, *args, **options)

    def _loaded_evalsha(self, keys: list[str], args: list[Any], raw: bool) -> Any:
        try:
            return self._evalsha(keys, args, raw)
        except redis.exceptions.NoScriptError:  # a restarted server, a new master
            self._client.script_load(source(self.name))
            return self._evalsha(keys, args, raw)

    def many(self, calls: Sequence[tuple[list[str], list[Any]]], *, raw: bool = False
             ) -> list[Any]:
        """Runs the script once per (keys, args), in one pipeline (on a cluster, all calls'
        keys in one slot: sent through that node's own client, as `then`); the replies in
        order, a failed call's error raised; `raw` as for a call. For scripts that may run
        twice (a reply lost to NOSCRIPT is run again after loading it: Redis refused them
        all, the script being one)."""
        if not calls:
            return []
        if not self._on_cluster:
            return _many(self._client, self.name, self.sha, calls, raw)
        return retried_while_slots_move(lambda: self._many_on_node(calls, raw))

    def _many_on_node(self, calls: Sequence[tuple[list[str], list[Any]]], raw: bool
                      ) -> list[Any]:
        node = self._client.get_redis_connection(self._client.get_node_from_key(calls[0][0][0]))
        try:
            return _many(node, self.name, self.sha, calls, raw)
        except redis.exceptions.AskError as error:  # MOVED too: the slot map changed
            self._client.nodes_manager.initialize()
            raise redis.exceptions.ClusterError(str(error)) from error

    def then(self, keys: list[str], args: list[Any], command: tuple[Any, ...]) -> list[Any]:
        """Runs the script, then `command`, on one connection in one round trip (WAIT must
        follow the write it waits for on the same connection). Returns both answers.

        On a cluster both go to the script's node through that node's own client: a
        cluster pipeline would send a redirected script alone to another node, and WAIT
        would then answer for a connection that wrote nothing."""
        if not self._on_cluster:
            return _then(self._client, self.name, self.sha, keys, args, command)
        return retried_while_slots_move(lambda: self._then_on_node(keys, args, command))

    def _then_on_node(
        self, keys: list[str], args: list[Any], command: tuple[Any, ...]
    ) -> list[Any]:
        node = self._client.get_redis_connection(self._client.get_node_from_key(keys[0]))
        try:
            return _then(node, self.name, self.sha, keys, args, command)
        except redis.exceptions.AskError as error:  # MOVED too: the slot map changed
            self._client.nodes_manager.initialize()
            raise redis.exceptions.ClusterError(str(error)) from error


def _many(client: Any, name: str, sha: str,
          calls: Sequence[tuple[list[str], list[Any]]], raw: bool = False) -> list[Any]:
    answers: list[Any] = []
    options: dict[str, Any] = {NEVER_DECODE: []} if raw else {}
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args, **options)
        answers = pipe.execute(raise_on_error=False)
        if attempt or not any(isinstance(a, redis.exceptions.NoScriptError) for a in answers):
            break
        client.script_load(source(name))
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


def _then(
    client: Any, name: str, sha: str, keys: list[str], args: list[Any], command: tuple[Any, ...]
) -> list[Any]:
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.execute_command(*command)
        answers: list[Any] = pipe.execute(raise_on_error=False)
        if not isinstance(answers[0], redis.exceptions.NoScriptError) or attempt:
            break
        client.script_load(source(name))
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


class AsyncScript:
    """`Script` for a `redis.asyncio` client (`Redis` or `RedisCluster`): the same text, SHA,
    fallback and retry while a cluster slot moves, awaited."""

    def __init__(self, client: Any, name: str) -> None:
        self.name = name
        self._client = client
        self._registered = client.register_script(source(name))
        self.sha: str = self._registered.sha
        self._on_cluster = is_async_cluster(client)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if self._on_cluster:
            return await retried_while_slots_move_async(lambda: self._evalsha(keys, args))
        return await self._evalsha(keys, args)

    async def _evalsha(self, keys: list[str], args: list[Any]) -> Any:
        try:
            if self._on_cluster:  # naming the node, as `Script` does
                return await self._client.execute_command(
                    "EVALSHA", self.sha, len(keys), *keys, *args,
                    target_nodes=self._client.get_node_from_key(keys[0]),
                )
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self._registered(keys=keys, args=args)

    async def then(self, keys: list[str], args: list[Any], command: tuple[Any, ...]) -> list[Any]:
        """`Script.then`, awaited: the script, then `command`, on one connection (on a
        cluster, one of the script's node)."""
        if self._on_cluster:
            return await retried_while_slots_move_async(
                lambda: self._then_on_node(keys, args, command))
        pool = self._client.connection_pool
        return await _then_async(pool.get_connection, pool.release, self, keys, args, command)

    async def _then_on_node(
        self, keys: list[str], args: list[Any], command: tuple[Any, ...]
    ) -> list[Any]:
        node = self._client.get_node_from_key(keys[0])

        async def release(connection: Any) -> None:
            node.release(connection)

        async def acquire() -> Any:
            return node.acquire_connection()

        try:
            return await _then_async(acquire, release, self, keys, args, command)
        except (redis.exceptions.AskError, redis.exceptions.MovedError) as error:
            await self._client.nodes_manager.initialize()  # the slot map changed
            raise redis.exceptions.ClusterError(str(error)) from error

    async def load(self) -> None:
        """Loads the script into the server (on a cluster, into every master)."""
        await self._client.script_load(source(self.name))


async def _then_async(acquire: Callable[[], Awaitable[Any]],
                      release: Callable[[Any], Awaitable[None]], script: AsyncScript,
                      keys: list[str], args: list[Any], command: tuple[Any, ...]) -> list[Any]:
    """The script then `command`, on one connection of a pool (`acquire`, `release`), loaded
    once if the server does not know it; raises an error either answered."""
    packed = [hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)),
              hiredis.pack_command(command)]
    for attempt in range(2):
        answers = await _exchange(acquire, release, packed)
        if not isinstance(answers[0], redis.exceptions.NoScriptError) or attempt:
            break
        await script.load()
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


class BatchingScript:
    """An `AsyncScript` whose calls made by tasks in the same turn of the event loop go to
    Redis in one write on one connection, pipelined (not a transaction: each call stays
    its own atomic script), packed by hiredis as sync redis-py packs commands.

    redis.asyncio packs every command in Python, and that, with its per-command overhead,
    is what bounds the appends of one process (see bench/async.py). A call alone in its
    turn costs one more loop iteration. A connection error retries the batch with the
    connection's retry policy: the script is idempotent (same store_event_ids), as when
    redis-py retries a single call. For a `redis.asyncio.Redis` (one connection pool).

    `then(keys, args, command)` calls are batched too: `command` (WAIT) is sent once after
    the batch's scripts, on their connection, and answers for all of them.
    """

    def __init__(self, client: Any, name: str) -> None:
        self.script = AsyncScript(client, name)
        self.name, self.sha = name, self.script.sha
        self._pool = client.connection_pool
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        return await self._queued(keys, args, None)

    async def then(self, keys: list[str], args: list[Any], command: tuple[Any, ...]) -> list[Any]:
        answers: list[Any] = await self._queued(keys, args, command)
        return answers

    async def _queued(self, keys: list[str], args: list[Any],
                      command: tuple[Any, ...] | None) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(keys, args, command, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)  # once the tasks ready now have added theirs
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        commands = list(dict.fromkeys(call.command for call in batch if call.command))
        packed = [
            hiredis.pack_command(("EVALSHA", self.sha, len(call.keys), *call.keys, *call.args))
            for call in batch
        ] + [hiredis.pack_command(command) for command in commands]
        try:
            replies = await _exchange(self._pool.get_connection, self._pool.release, packed)
        except Exception as error:  # the connection's: every call of the batch shares it
            replies = [error] * len(packed)
        answered = dict(zip(commands, replies[len(batch):], strict=True))
        for call, reply in zip(batch, replies, strict=False):
            if isinstance(reply, redis.exceptions.NoScriptError):
                outcome = await _outcome(  # loads it, once
                    self.script(call.keys, call.args) if call.command is None
                    else self.script.then(call.keys, call.args, call.command))
            elif call.command is None or isinstance(reply, Exception):
                outcome = reply
            else:  # the script's reply and the command's answer, as `then` gives them
                confirmed = answered[call.command]
                outcome = confirmed if isinstance(confirmed, Exception) else [reply, confirmed]
            if call.future.done():  # its caller was cancelled
                continue
            if isinstance(outcome, BaseException):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)



@dataclass(frozen=True)
class _Call:
    """A call waiting in a BatchingScript for its turn's batch."""

    keys: list[str]
    args: list[Any]
    command: tuple[Any, ...] | None
    future: asyncio.Future[Any]


async def _exchange(acquire: Callable[[], Awaitable[Any]],
                    release: Callable[[Any], Awaitable[None]], packed: list[bytes]) -> list[Any]:
    """Sends the packed commands on one connection of a pool and reads every reply (an
    error reply in its place), retried on a connection error with the connection's retry
    policy: only for commands that may be sent twice (the append script may)."""
    connection = await acquire()
    try:
        replies: list[Any] = await connection.retry.call_with_retry(
            lambda: _write_and_read(connection, packed),
            lambda error: connection.disconnect(),
        )
        return replies
    except BaseException:
        await connection.disconnect()  # replies may be left unread on it
        raise
    finally:
        await release(connection)


async def _write_and_read(connection: Any, packed: list[bytes]) -> list[Any]:
    await connection.send_packed_command(packed)
    replies: list[Any] = []
    for _ in packed:
        try:
            replies.append(await connection.read_response())
        except redis.exceptions.ResponseError as error:
            replies.append(error)
    return replies


async def _outcome(call: Any) -> Any:
    try:
        return await call
    except Exception as error:
        return error
