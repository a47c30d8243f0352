"""What a Redis Cluster changes, in one place: telling a cluster client apart, where a
prefix's partitions live, retrying a command refused while its slot moves, and the wake-up
channels the cluster publisher waits on.

Every key one command or script touches shares its partition's hash tag (see `keys`), so
each runs on one slot; commands over several partitions go through non-transactional
pipelines, which redis-py's `ClusterPipeline` splits per node.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeGuard, TypeVar

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from .keys import RedisKeys

log = logging.getLogger("es_workers.cluster")

T = TypeVar("T")

# A slot in migration answers TRYAGAIN (some of a script's keys moved, some not yet) and
# redis-py gives up after its 16 redirections ("TTL exhausted"); CLUSTERDOWN comes during a
# failover. Each is a refusal before anything ran, so the call is sent again as it was.
SLOT_MOVING = (redis.exceptions.TryAgainError, redis.exceptions.ClusterError)
SLOT_MOVING_PATIENCE_S = 30.0


def is_cluster(client: object) -> TypeGuard[RedisCluster]:
    return isinstance(client, RedisCluster)


def is_async_cluster(client: object) -> bool:
    return isinstance(client, redis.asyncio.RedisCluster)


class SlotMoves:
    """How long a call the cluster refuses while its slot moves is sent again (up to
    SLOT_MOVING_PATIENCE_S), and the pause before each try: the policy of both halves."""

    def __init__(self) -> None:
        self._deadline = time.monotonic() + SLOT_MOVING_PATIENCE_S
        self._pause = 0.01

    def pause_after(self, error: Exception) -> float:
        """The pause before sending again after `error`; raises it once patience ran out."""
        if time.monotonic() > self._deadline:
            raise error
        pause, self._pause = self._pause, min(self._pause * 2, 0.5)
        log.debug("slot moving (%s): sending again in %.0f ms", error, pause * 1000)
        return pause


def retried_while_slots_move(call: Callable[[], T]) -> T:
    """`call()`, sent again while the cluster refuses it because its slot is moving to
    another master (`SlotMoves`)."""
    moves = SlotMoves()
    while True:
        try:
            return call()
        except SLOT_MOVING as error:
            time.sleep(moves.pause_after(error))


async def retried_while_slots_move_async(call: Callable[[], Awaitable[T]]) -> T:
    """`retried_while_slots_move` for a call awaited through a redis.asyncio client."""
    moves = SlotMoves()
    while True:
        try:
            return await call()
        except SLOT_MOVING as error:
            await asyncio.sleep(moves.pause_after(error))


def read_groups(
    client: Any, group: str, consumer: str, streams: Sequence[str], start: str, count: int
) -> list[Any]:
    """XREADGROUP of each stream (one per slot), non-blocking, in one pipeline; the replies
    as `client.xreadgroup` gives them, concatenated.

    Each command names its node: XREADGROUP's keys are "movable", so redis-py would
    otherwise ask the server for them (COMMAND GETKEYS) before every call, a round trip
    each (a round over 16 outboxes took ~3 ms instead of ~0.3 ms). A MOVED reply still
    sends it to the new owner."""
    pipe = client.pipeline(transaction=False)
    for key in streams:
        pipe.execute_command(
            "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", key, start,
            target_nodes=client.get_node_from_key(key),
        )
    return [stream for reply in pipe.execute() for stream in reply or []]


def masters(client: Any) -> list[str]:
    """The cluster's masters (`host:port`), as the client last saw them."""
    return sorted(node.name for node in client.get_primaries())


def partition_masters(client: Any, keys: RedisKeys) -> dict[str, int]:
    """The masters serving the prefix's partitions, with how many each serves."""
    served: dict[str, int] = {}
    for p in range(keys.partitions):
        name = client.get_node_from_key(keys.outbox(p)).name
        served[name] = served.get(name, 0) + 1
    return served


def spread_warning(client: Any, keys: RedisKeys) -> str | None:
    """A warning when the prefix's partitions leave masters of the cluster unused, or one
    master serves more than its share (partitions / masters, rounded up); None on one
    Redis, or when they are spread evenly."""
    if not is_cluster(client):
        return None
    every, served = masters(client), partition_masters(client, keys)
    share = -(-keys.partitions // len(every))
    crowded = {name: count for name, count in served.items() if count > share}
    if len(served) < min(len(every), keys.partitions):
        return (
            f"prefix {keys.prefix!r} has {keys.partitions} partitions, served by "
            f"{len(served)} of the cluster's {len(every)} masters: the others hold none "
            "of its events. Move slots to them (redis-cli --cluster rebalance)"
        )
    if len(served) < len(every):
        return (
            f"prefix {keys.prefix!r} has {keys.partitions} partitions, served by "
            f"{len(served)} of the cluster's {len(every)} masters: the others hold none "
            "of its events. A prefix can use at most as many masters as it has "
            "partitions; choose partitions of at least 4 x masters for a new prefix "
            "(ES_PARTITIONS)"
        )
    if crowded:
        listed = ", ".join(f"{name} serves {count}" for name, count in sorted(crowded.items()))
        return (
            f"prefix {keys.prefix!r}: {listed} of its {keys.partitions} partitions, more "
            f"than its share of {share} over {len(every)} masters: they carry more of the "
            "load. Spread the slots evenly (redis-cli --cluster rebalance)"
        )
    return None


class Wakeups:
    """Follows the partitions' wake-up channels (sharded pub/sub: each lives on the master
    of its partition) and notes which ones spoke. One thread per master subscribes to the
    channels that master serves; when a slot moves (the server ends the subscription) or a
    connection fails, the channels are grouped again.

    A lost wake-up costs latency only: the publisher reads every outbox every `block_ms`.
    """

    def __init__(self, client: RedisCluster, channels: Sequence[str], *,
                 logger: logging.Logger | None = None) -> None:
        self.log = logger or log
        self.client: Any = client  # redis-py's cluster client is untyped
        self.channels = list(channels)
        self.woken = threading.Event()
        self._lock = threading.Lock()
        self._spoke: set[str] | None = None  # None: every channel (some may have been missed)
        self._stopped = threading.Event()
        self._regroup = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="es-wake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._regroup.set()
        self._thread.join(timeout=5)

    def take(self) -> set[str] | None:
        """The channels that spoke since the last call (None: any may have: read them all),
        and clears `woken`; a wake-up from now on is kept for the next call."""
        with self._lock:
            spoke, self._spoke = self._spoke, set()
            self.woken.clear()
        return spoke

    def _wake(self, channel: str | None) -> None:
        with self._lock:
            if channel is None:
                self._spoke = None
            elif self._spoke is not None:
                self._spoke.add(channel)
            self.woken.set()

    def wait(self, stop: threading.Event, timeout_s: float) -> None:
        """Returns when woken, when `stop` is set, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.woken.wait(min(left, 0.05)):
                return

    def _supervise(self) -> None:
        while not self._stopped.is_set():
            self._regroup.clear()
            by_node: dict[str, list[str]] = {}
            try:
                self.client.nodes_manager.initialize()  # the slot map as it is now
                for channel in self.channels:
                    node = self.client.get_node_from_key(channel)
                    by_node.setdefault(node.name, []).append(channel)
            except redis.RedisError as error:
                self.log.warning("wake-up channels: %s; trying again", error)
                self._stopped.wait(0.5)
                continue
            listeners = [
                threading.Thread(target=self._listen, args=(name, group), daemon=True,
                                 name=f"es-wake-{name}")
                for name, group in by_node.items()
            ]
            for listener in listeners:
                listener.start()
            self._regroup.wait()
            for listener in listeners:
                listener.join(timeout=5)

    def _listen(self, node_name: str, channels: list[str]) -> None:
        node = self.client.get_node(node_name=node_name)
        pubsub = self.client.get_redis_connection(node).pubsub()
        try:
            for channel in channels:  # one per call: channels of several slots
                pubsub.ssubscribe(channel)
            while pubsub.get_message(timeout=0.2) is not None:  # the confirmations
                pass
            self._wake(None)  # wake-ups sent before we listened were missed: read all
            while not self._regroup.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is None:
                    continue
                if message["type"] == "smessage":
                    channel = message["channel"]
                    self._wake(channel.decode() if isinstance(channel, bytes) else channel)
                elif message["type"] == "sunsubscribe":  # its slot moved away
                    break
        except redis.RedisError as error:
            self.log.warning("wake-up channels on %s: %s; regrouping in 1 s", node_name, error)
            self._stopped.wait(1.0)
        finally:
            pubsub.close()
            self._regroup.set()
