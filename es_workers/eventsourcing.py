"""A persistence module of the `eventsourcing` library (9.5) on es_workers' Redis.

    PERSISTENCE_MODULE=es_workers.eventsourcing
    ES_REDIS_URL=redis://127.0.0.1:6379/0   # and the other ES_... settings of es_workers

eventsourcing passes its application's environment to `Factory`, which reads the `ES_...`
settings from it (an application's own `<APP NAME>_ES_...` first, as eventsourcing does)
and builds the Redis client through es_workers' wiring: URL, cluster, Sentinel, TLS,
credentials and timeouts apply as for a Store. The recorders live in `redis/recorders.py`;
each application keeps its keys under `<prefix>:es:{<application name>}:`.

With `ES_ARCHIVE_URL`, the recorders read through the archive: `es-workers archive` moves
each aggregate's events older than its newest `ES_ARCHIVE_AFTER` to PostgreSQL
(`redis/recorder_archiver.py`), and `select_events` and `select_notifications` return them,
in order, before the hot ones. The factory adds its application's name to the set of the
prefix's applications, which the archiver reads.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic

from .redis.failures import server_name, translated
from .redis.opening import run_steps, server_checks
from .redis.recorder_keys import ApplicationKeys, applications_key
from .redis.recorders import (
    RedisAggregateRecorder,
    RedisApplicationRecorder,
    RedisProcessRecorder,
    RedisTrackingRecorder,
)
from .settings import Settings, env_name, load_settings
from .wiring import postgres_archive, redis_client


def settings_of(env: Environment) -> Settings:
    """es_workers' settings from an eventsourcing environment: each `ES_<NAME>` found there
    (the application's `<APP>_ES_<NAME>` first), over the usual sources."""
    found: dict[str, Any] = {name: env.get(env_name(name)) for name in Settings.model_fields}
    return load_settings(**{name: value for name, value in found.items() if value is not None})


class Factory(InfrastructureFactory[RedisTrackingRecorder]):
    """Builds the recorders of one eventsourcing application (named by its environment)
    on the Redis the `ES_...` settings name."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self.settings = settings_of(self.env)
        self.client = redis_client(self.settings)
        self.durability = self.settings.durability()
        self.archive = postgres_archive(self.settings, recorded=True)
        self.server = server_name(self.client)
        with translated(self.server, "opening the eventsourcing recorders"):
            run_steps(server_checks(self.durability, self.server), self.client)

    def _keys(self) -> ApplicationKeys:
        # Read when a recorder is made: eventsourcing may name the environment later.
        keys = ApplicationKeys(self.settings.prefix, self.env.name)
        with translated(self.server, "registering the eventsourcing application"):
            # So that `es-workers archive` finds it (one SADD per recorder made).
            self.client.sadd(applications_key(self.settings.prefix), self.env.name)
        return keys

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return RedisAggregateRecorder(self.client, self._keys(), purpose,
                                      durability=self.durability, archive=self.archive)

    def application_recorder(self) -> ApplicationRecorder:
        recorder: ApplicationRecorder = self._built(
            self._class(self.APPLICATION_RECORDER_TOPIC, RedisApplicationRecorder))
        return recorder

    def tracking_recorder(
        self, tracking_recorder_class: type[RedisTrackingRecorder] | None = None
    ) -> RedisTrackingRecorder:
        recorder: RedisTrackingRecorder = self._built(tracking_recorder_class or self._class(
            self.TRACKING_RECORDER_TOPIC, RedisTrackingRecorder))
        return recorder

    def process_recorder(self) -> ProcessRecorder:
        recorder: ProcessRecorder = self._built(
            self._class(self.PROCESS_RECORDER_TOPIC, RedisProcessRecorder))
        return recorder

    def _built(self, recorder_class: Any) -> Any:
        # A recorder class of the application's own may not take an archive: passed only
        # when there is one.
        archived = {"archive": self.archive} if self.archive is not None else {}
        return recorder_class(self.client, self._keys(), durability=self.durability,
                              **archived)

    def _class(self, topic_name: str, default: type[Any]) -> Any:
        """The recorder class a topic in the environment names, else `default`."""
        topic = self.env.get(topic_name)
        return resolve_topic(topic) if topic else default

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()
        self.client.close()
