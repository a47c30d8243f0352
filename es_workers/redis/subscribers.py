"""The subscriber IDs run under a prefix, and the entity types of each: two apps on one Redis
with the same prefix and subscriber ID would take each other's notices without a word (a
subscriber ID names one queue and one set of checkpoints). This module alone names the key.

One hash `<prefix>:subscribers`: field the subscriber ID, value the JSON list (sorted) of the
entity types it subscribes to. A publisher and each worker `claim` their app's subscribers
when they start:
- a subscriber ID not recorded yet is recorded;
- the same entity types: nothing to do (nothing written: a full Redis still starts);
- more entity types (the app added one): the record is extended, and that is logged;
- fewer, or other, entity types: another app (or an older version of this one) runs that
  subscriber ID under this prefix, so the process refuses to start (ConfigurationError).
  An app that dropped an entity type on purpose removes the record first:
  `HDEL <prefix>:subscribers <subscriber ID>`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigurationError
from ..ports import subscriptions_of
from .keys import RedisKeys, text

__all__ = ["SubscriberRegistry", "subscriptions_of"]

log = logging.getLogger("es_workers.subscribers")


class SubscriberRegistry:
    """Reads and claims the record of a prefix's subscribers (see the module's doc);
    redis-py's errors (the workers get it translated: `RedisStorage.subscriber_registry()`)."""

    def __init__(self, client: Any, keys: RedisKeys) -> None:
        self.client = client
        self.prefix = keys.prefix
        self.key = f"{keys.prefix}:subscribers"

    def recorded(self) -> dict[str, list[str] | None]:
        """Each recorded subscriber ID with its entity types (None: an unreadable record)."""
        return {text(field): _types(value)
                for field, value in self.client.hgetall(self.key).items()}

    def claim(self, subscriptions: Mapping[str, Iterable[str]]) -> None:
        """Records the app's subscribers (subscriber ID -> entity types), or raises
        ConfigurationError naming each one recorded with other entity types."""
        wanted = {s: sorted(set(types)) for s, types in subscriptions.items()}
        recorded = self.recorded()
        refused = [self._refusal(s, types, recorded[s]) for s, types in sorted(wanted.items())
                   if s in recorded and not _extends(types, recorded[s])]
        if refused:
            raise ConfigurationError("\n".join(refused))
        for subscriber_id, types in sorted(wanted.items()):
            if subscriber_id not in recorded:
                self._record_new(subscriber_id, types)
            elif recorded[subscriber_id] != types:
                added = sorted(set(types) - set(recorded[subscriber_id] or []))
                self.client.hset(self.key, subscriber_id, json.dumps(types))
                log.info("subscriber %s under prefix %r now also subscribes to %s",
                         subscriber_id, self.prefix, ", ".join(added),
                         extra={"subscriber_id": subscriber_id})

    def _record_new(self, subscriber_id: str, types: list[str]) -> None:
        if self.client.hsetnx(self.key, subscriber_id, json.dumps(types)):
            return
        # Another process recorded it since it was read: it must agree as well.
        before = _types(self.client.hget(self.key, subscriber_id))
        if not _extends(types, before):
            raise ConfigurationError(self._refusal(subscriber_id, types, before))

    def _refusal(self, subscriber_id: str, types: list[str], before: list[str] | None) -> str:
        held = ", ".join(before) if before is not None else "(an unreadable record)"
        return (
            f"subscriber {subscriber_id!r} runs under prefix {self.prefix!r} for entity types "
            f"{held} (recorded in {self.key}), but this app subscribes it to "
            f"{', '.join(types)}: another app on this Redis uses the same prefix and "
            "subscriber ID, and each would take the other's notices. Give this app its own "
            "ES_PREFIX or another subscriber ID. If this app dropped those entity types on "
            f"purpose, remove the record first: HDEL {self.key} {subscriber_id}"
        )


def _types(value: bytes | str | None) -> list[str] | None:
    try:
        loaded = json.loads(text(value)) if value is not None else None
    except ValueError:
        return None
    if isinstance(loaded, list) and all(isinstance(t, str) for t in loaded):
        return sorted(loaded)
    return None


def _extends(types: list[str], before: list[str] | None) -> bool:
    """Whether an app subscribing to `types` may run where `before` was recorded: the same
    entity types, or more (an app that gained one)."""
    return before is not None and set(before) <= set(types)
