"""Health of a deployment, for `es-workers health` (a container's healthcheck) and the
thresholds of `es-workers status --check` (alerts, cron).

Healthy: Redis answers, the bus's broker answers, and a process of this host (the
container) has beaten recently (see `es_workers.redis.heartbeats`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from .admin import StoreStatus
from .redis.heartbeats import BEAT_EVERY_S
from .redis.storage import RedisStorage
from .store import Store

DEFAULT_MAX_AGE_S = 6 * BEAT_EVERY_S  # a few missed beats (a long GC, a slow Redis) pass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_health(store: Store, *, role: str | None = None, host: str | None = None,
                 max_age_s: float = DEFAULT_MAX_AGE_S) -> list[Check]:
    """Redis, the broker, and the heartbeats of `host` (this host when None, every host
    when "*"), of processes in `role` ("publisher", "worker") or any role when None."""
    checks = [_answers("redis", lambda: _storage(store).client.ping())]
    checks.append(_answers("broker", lambda: _ping_broker(store)))
    if checks[0].ok:
        checks.append(_heartbeats(_storage(store), role, host or socket.gethostname(),
                                  max_age_s))
    return checks


def _storage(store: Store) -> RedisStorage:
    if not isinstance(store.storage, RedisStorage):
        raise TypeError(f"health needs a RedisStorage, not {type(store.storage).__name__}")
    return store.storage


def _answers(name: str, ping: Callable[[], object]) -> Check:
    try:
        ping()
    except Exception as error:  # whatever the client raises, the answer is "not healthy"
        return Check(name, False, f"{type(error).__name__}: {error or 'no answer'}")
    return Check(name, True, "answers")


def _ping_broker(store: Store) -> None:
    """A Redis broker is pinged; a RabbitMQ one must hold an open connection."""
    broker = getattr(store.bus, "broker", None)
    if broker is None:
        return  # an in-process bus: nothing to reach
    client = getattr(broker, "client", None)
    if client is not None:
        client.ping()
    elif hasattr(broker, "connection") and not broker.connection.is_open:
        raise ConnectionError("the RabbitMQ connection is closed")


def _heartbeats(storage: RedisStorage, role: str | None, host: str, max_age_s: float) -> Check:
    beats = [b for b in storage.heartbeats.read()
             if (role is None or b.role == role) and (host == "*" or b.host == host)]
    what = f"{role or 'publisher or worker'} process" + ("" if host == "*" else f" on {host}")
    if not beats:
        return Check("heartbeat", False, f"no heartbeat from a {what}")
    fresh = [b for b in beats if b.age_s() <= max_age_s]
    if not fresh:
        youngest = min(b.age_s() for b in beats)
        return Check("heartbeat", False,
                     f"last heartbeat from a {what} is {youngest:.0f} s old (> {max_age_s:g} s)")
    listed = ", ".join(f"{b.role} {b.pid} {b.age_s():.0f} s ago" for b in fresh)
    return Check("heartbeat", True, listed)


@dataclass(frozen=True)
class Thresholds:
    """`status --check`: None leaves a measure unchecked."""

    max_lag: int | None = None  # events behind, per subscriber
    max_parked: int | None = 0  # parked entities, per subscriber
    max_backlog: int | None = None  # outbox entries not yet relayed


def breaches(report: StoreStatus, limits: Thresholds) -> list[str]:
    """What in `report` is past `limits`, one line each (empty: all within)."""
    found = []
    if limits.max_backlog is not None and report.outbox_backlog > limits.max_backlog:
        found.append(f"outbox backlog {report.outbox_backlog} > {limits.max_backlog}")
    for sub in report.subscribers:
        name = f"{sub.subscriber_id} on {sub.entity_type}"
        if limits.max_lag is not None and sub.events_behind > limits.max_lag:
            found.append(f"{name}: {sub.events_behind} events behind > {limits.max_lag}")
        if limits.max_parked is not None and len(sub.parked) > limits.max_parked:
            found.append(f"{name}: {len(sub.parked)} parked > {limits.max_parked}")
        interrupted = f"{sub.subscriber_id}: rebuild interrupted; run es-workers rebuild again"
        if sub.rebuild is not None and not sub.paused and interrupted not in found:
            found.append(interrupted)
    return found
