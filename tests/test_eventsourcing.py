"""es_workers.eventsourcing passes the `eventsourcing` library's own persistence test kit,
unmodified, on fakeredis, the real Redis and the 3-master Redis Cluster.

Each kit case is subclassed once per backend (`TestAggregateRecorderOnCluster`, ...). Every
test gets a prefix of its own, so its recorders start empty; its keys are deleted after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from conftest import REDIS_URL, delete_prefix, real_redis
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    StoredEvent,
    TrackingRecorder,
)
from eventsourcing.tests import application as app_kit
from eventsourcing.tests import persistence as kit
from eventsourcing.utils import Environment

from es_workers import DurabilityError
from es_workers.eventsourcing import Factory
from es_workers.redis.durability import Durability
from es_workers.redis.recorder_keys import ApplicationKeys
from es_workers.redis.recorders import (
    RedisAggregateRecorder,
    RedisApplicationRecorder,
    RedisProcessRecorder,
    RedisTrackingRecorder,
)
from es_workers.wiring import embedded_server

APP = "TestApp"


class OnBackend:
    """A kit case on one backend: `self.client` and a fresh `self.prefix`; the environment
    (`ES_REDIS_URL`, `ES_PREFIX`, `PERSISTENCE_MODULE`) names them for the factory."""

    __test__ = False  # collected once per backend, below
    backend: str
    client: Any
    prefix: str

    @pytest.fixture(autouse=True)
    def _on_backend(self, request: pytest.FixtureRequest,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        self.prefix = f"t-{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("PERSISTENCE_MODULE", "es_workers.eventsourcing")
        monkeypatch.setenv("ES_PREFIX", self.prefix)
        if self.backend == "fakeredis":  # the factory's: the embedded one
            monkeypatch.delenv("ES_REDIS_URL", raising=False)
            self.client = fakeredis.FakeRedis(server=embedded_server())
        elif self.backend == "cluster":
            cluster = request.getfixturevalue("redis_cluster")
            monkeypatch.setenv("ES_REDIS_URL", cluster.urls[0])
            self.client = cluster.client()
        else:
            monkeypatch.setenv("ES_REDIS_URL", REDIS_URL)
            self.client = real_redis()
        yield
        delete_prefix(self.client, self.prefix)
        self.client.close()

    @property
    def keys(self) -> ApplicationKeys:
        return ApplicationKeys(self.prefix, APP)


class AggregateRecorderCase(OnBackend, kit.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return RedisAggregateRecorder(self.client, self.keys)


class ApplicationRecorderCase(OnBackend, kit.ApplicationRecorderTestCase[RedisApplicationRecorder]):
    def create_recorder(self) -> RedisApplicationRecorder:
        return RedisApplicationRecorder(self.client, self.keys)

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TrackingRecorderCase(OnBackend, kit.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return RedisTrackingRecorder(self.client, self.keys)


class ProcessRecorderCase(OnBackend, kit.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return RedisProcessRecorder(self.client, self.keys)


class NonInterleavingCase(OnBackend, kit.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return RedisApplicationRecorder(self.client, self.keys)


class CustomTrackingRecorder(RedisTrackingRecorder):
    pass


class FactoryCase(OnBackend, kit.InfrastructureFactoryTestCase[Factory]):
    def setUp(self) -> None:
        # The kit's factory reads this environment (os.environ names the backend).
        self.env = Environment(APP, {"PERSISTENCE_MODULE": "es_workers.eventsourcing"})
        super().setUp()

    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return RedisAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return RedisApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return RedisTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return CustomTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return RedisProcessRecorder


class ExampleApplicationCase(OnBackend, app_kit.ExampleApplicationTestCase):
    """The kit's bank application, with snapshotting, found through PERSISTENCE_MODULE."""

    expected_factory_topic = "es_workers.eventsourcing:Factory"


CASES = [AggregateRecorderCase, ApplicationRecorderCase, TrackingRecorderCase,
         ProcessRecorderCase, NonInterleavingCase, FactoryCase, ExampleApplicationCase]
BACKENDS = {"fakeredis": "OnFakeredis", "redis": "OnRedis", "cluster": "OnCluster"}



def _on_each_backend() -> None:
    for case in CASES:
        for backend, suffix in BACKENDS.items():
            name = f"Test{case.__name__.removesuffix('Case')}{suffix}"
            globals()[name] = type(name, (case,), {
                "backend": backend, "__test__": True, "__module__": __name__})


_on_each_backend()


# -- Beyond the kit ---------------------------------------------------------------------------


def test_a_write_sent_again_after_its_reply_was_lost_is_recorded_once(
    redis_client: Any, prefix: str
) -> None:
    recorder = RedisApplicationRecorder(redis_client, ApplicationKeys(prefix, APP))
    script = recorder.recording.script

    def sent_twice(keys: list[str], args: list[Any]) -> Any:
        script(keys, args)  # its reply lost: redis-py sends the same command again
        return script(keys, args)

    recorder.recording.script = sent_twice  # type: ignore[assignment]
    originator = uuid.uuid4()
    events = [StoredEvent(originator, version, "topic", b"state") for version in (1, 2)]

    assert recorder.insert_events(events) == [1, 2]
    assert recorder.select_events(originator) == events
    assert [n.id for n in recorder.select_notifications(None, 10)] == [1, 2]


def test_the_factory_reads_an_applications_own_settings_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ES_REDIS_URL", raising=False)  # the embedded Redis
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    env = Environment("Bank", {"ES_PREFIX": "t-other", "BANK_ES_PREFIX": prefix})
    with Factory(env) as factory:
        recorder = factory.application_recorder()
        recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "topic", b"state")])
        client = fakeredis.FakeRedis(server=embedded_server())
        assert {key.decode() for key in client.scan_iter(f"{prefix}:*")} >= {
            f"{prefix}:es:{{Bank}}:notifications"}
        delete_prefix(client, prefix)
        factory.close()


def test_notifications_of_some_topics_are_found_past_a_page_of_others(
    redis_client: Any, prefix: str
) -> None:
    recorder = RedisApplicationRecorder(redis_client, ApplicationKeys(prefix, APP))
    originator = uuid.uuid4()
    recorder.insert_events([StoredEvent(originator, version, "a" if version <= 150 else "b",
                                        b"state") for version in range(1, 154)])

    found = recorder.select_notifications(None, 2, topics=["b"])

    assert [(n.id, n.topic, n.originator_version) for n in found] == [(151, "b", 151),
                                                                       (152, "b", 152)]


def test_a_write_asked_to_wait_for_a_replica_that_is_not_there_raises_durability_error(
) -> None:
    client, prefix = real_redis(), f"t-{uuid.uuid4().hex[:12]}"
    recorder = RedisApplicationRecorder(client, ApplicationKeys(prefix, APP),
                                        durability=Durability(replicas=1, timeout_ms=10))
    originator = uuid.uuid4()
    try:
        with pytest.raises(DurabilityError, match="confirmed on 0 of the 1 replicas"):
            recorder.insert_events([StoredEvent(originator, 1, "topic", b"state")])
        assert len(recorder.select_events(originator)) == 1  # stored on the primary
    finally:
        delete_prefix(client, prefix)
        client.close()
