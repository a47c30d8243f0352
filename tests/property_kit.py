"""Shared by the Hypothesis tests: example budgets, and RedisStorage on each backend.

Budgets come from a Hypothesis profile chosen by ES_HYPOTHESIS_PROFILE: `quick` (the
default, so the model and fuzz files each run in well under a minute) or `long` for a
thorough local run (`ES_HYPOTHESIS_PROFILE=long pytest tests/test_model_storage.py`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fakeredis
import redis
from conftest import delete_prefix, real_redis
from hypothesis import HealthCheck, settings

from es_workers import RedisStorage

settings.register_profile(
    "quick",
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(os.environ.get("ES_HYPOTHESIS_PROFILE", "quick"))


def budget(share: float = 1.0) -> settings:
    """The profile's settings, with `share` of its examples (for slower tests)."""
    return settings(PROFILE, max_examples=max(1, int(PROFILE.max_examples * share)))


class RedisBackend:
    """Hands out RedisStorages with fresh prefixes on one backend; deletes their keys."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.client: redis.Redis = (
            real_redis() if backend == "redis" else fakeredis.FakeRedis(server=self._server())
        )

    @staticmethod
    def _server() -> fakeredis.FakeServer:
        return fakeredis.FakeServer(version=(7, 0))

    @contextmanager
    def storage(self) -> Iterator[RedisStorage]:
        if self.backend == "fakeredis":  # a fresh server per example: nothing carries over
            self.client = fakeredis.FakeRedis(server=self._server())
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        try:
            yield RedisStorage(self.client, prefix=prefix)
        finally:
            delete_prefix(self.client, prefix)
