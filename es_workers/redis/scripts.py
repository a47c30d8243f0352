"""The one loader of the Lua scripts that sit beside this module (`<name>.lua`).

Each script's text is read once per process; a `Script` runs it by SHA and loads it into
the server only when the server does not know it (after a restart or SCRIPT FLUSH).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis

from .cluster import SLOT_MOVING, is_cluster, retried_while_slots_move


@cache
def source(name: str) -> str:
    """The text of `<name>.lua`."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text()


class Script:
    """A Lua script of this package bound to a client (a `redis.Redis` or `RedisCluster`)."""

    def __init__(self, client: Any, name: str) -> None:
        self.name = name
        self._client = client
        self._registered = client.register_script(source(name))
        self.sha: str = self._registered.sha
        self._on_cluster = is_cluster(client)

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        # evalsha directly: redis-py's Script.__call__ does the same with ~2 us more per
        # call, and this runs on every append.
        try:
            if self._on_cluster:
                # Naming the node: redis-py would hash every key twice to find it (all
                # share one slot), a fifth of an append's time on a cluster.
                return self._client.execute_command(
                    "EVALSHA", self.sha, len(keys), *keys, *args,
                    target_nodes=self._client.get_node_from_key(keys[0]),
                )
            return self._client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return self._registered(keys=keys, args=args)
        except SLOT_MOVING:
            # On a cluster, the script's slot is moving to another master: the server
            # refused it before running it, so it is sent again as it was.
            return retried_while_slots_move(lambda: self._registered(keys=keys, args=args))
