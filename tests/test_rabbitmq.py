"""Delivery over RabbitMQ (Dramatiq's RabbitmqBroker) from a Redis Cluster, the deployment
beyond one Redis: the guarantees of the Redis broker hold (every event once per subscriber,
in order per entity; a failing handler parks its entity only; a late subscriber is handed
the history). Each test has a vhost of its own. Real processes killed with SIGKILL are in
test_processes_cluster.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import servers
from apps.delivery_kit import (
    FAST_PUBLISHER,
    Delivery,
    Recorder,
    assert_exactly_once_in_order,
    check_quiet_while_no_worker_runs,
)
from conftest import ACCOUNT_EVENTS, REDIS_URL, delete_prefix, real_redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from kit import wait_for, write_count
from servers import RedisClusterServers

from es_workers import ConfigurationError, RedisStorage, admin, wiring
from es_workers.wiring import check_broker

ROOT = Path(__file__).resolve().parent.parent
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")

pytestmark = pytest.mark.servers


@pytest.fixture
def delivery(redis_cluster: RedisClusterServers, rabbitmq_vhost: str) -> Iterator[Delivery]:
    client = redis_cluster.client()
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    storage = RedisStorage(client, prefix=prefix, publisher=FAST_PUBLISHER)
    made = Delivery(storage, RabbitmqBroker(url=rabbitmq_vhost), events=ACCOUNT_EVENTS)
    try:
        yield made
    finally:
        made.stop()
        delete_prefix(client, prefix)  # type: ignore[arg-type]
        client.close()


def test_every_subscriber_handles_every_event_once_in_order_over_rabbitmq(
    delivery: Delivery,
) -> None:
    recorders = {name: Recorder() for name in ("balances", "audit")}
    for name, recorder in recorders.items():
        delivery.store.subscribe("account", name, recorder)
    heads = {f"acc-{i}": write_count(delivery.store, f"acc-{i}", 3) for i in range(20)}
    delivery.start_store()
    delivery.start_worker(threads=4)
    for round_ in range(3):  # more while delivery runs
        for i in range(0, 30, 2):
            heads[f"acc-{i}"] = write_count(delivery.store, f"acc-{i}", round_ + 1)

    for recorder in recorders.values():
        wait_for(lambda r=recorder: r.has(heads), "every event handled")  # type: ignore[misc]
        assert_exactly_once_in_order(recorder, heads)
        assert recorder.overlaps == 0
    status = admin.status(delivery.store)
    assert all(s.events_behind == 0 and s.caught_up for s in status.subscribers)



def test_while_no_worker_runs_waiting_notices_are_not_sent_again_over_rabbitmq(
    delivery: Delivery, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="es_workers.publisher")
    check_quiet_while_no_worker_runs(
        delivery, lambda: [r.getMessage() for r in list(caplog.records)])


def test_a_failing_handler_parks_its_entity_only_then_retry_delivers_it(
    delivery: Delivery,
) -> None:
    broken = {"acc-1"}
    recorder = Recorder(fail=lambda event: event.entity_id in broken and event.event_number == 2)
    delivery.store.subscribe("account", "balances", recorder)
    delivery.start_store()
    delivery.start_worker()
    heads = {f"acc-{i}": write_count(delivery.store, f"acc-{i}", 3) for i in range(5)}

    others = {e: h for e, h in heads.items() if e not in broken}
    wait_for(lambda: recorder.has(others), "the other entities handled")
    wait_for(lambda: admin.parked(delivery.store, "balances", "account"), "acc-1 parked")
    (parked,) = admin.parked(delivery.store, "balances", "account")
    assert (parked.entity_id, parked.event_number) == ("acc-1", 2)

    broken.clear()
    admin.retry_parked(delivery.store, "balances", "account", "acc-1")
    wait_for(lambda: recorder.has(heads), "acc-1 handled after the retry")
    assert_exactly_once_in_order(recorder, heads)


def test_a_late_subscriber_is_handed_the_history_over_rabbitmq(
    delivery: Delivery, rabbitmq_vhost: str
) -> None:
    early = Recorder()
    delivery.store.subscribe("account", "balances", early)
    heads = {f"acc-{i}": write_count(delivery.store, f"acc-{i}", 2) for i in range(30)}
    delivery.start_store()
    delivery.start_worker()
    wait_for(lambda: early.has(heads), "the first subscriber up to date")
    delivery.stop()

    # The app is deployed again with one more subscriber.
    storage = RedisStorage(delivery.storage.client, prefix=delivery.storage.keys.prefix,
                           publisher=FAST_PUBLISHER)
    second = Delivery(storage, RabbitmqBroker(url=rabbitmq_vhost), events=ACCOUNT_EVENTS)
    late, early_again = Recorder(), Recorder()
    second.store.subscribe("account", "audit", late)
    second.store.subscribe("account", "balances", early_again)
    second.start_store()
    second.start_worker()
    try:
        wait_for(lambda: late.has(heads), "the late subscriber handed the history")
    finally:
        second.stop()
    assert_exactly_once_in_order(late, heads)
    assert early_again.count() == 0  # the first subscriber was not handed it again


# A misconfigured RabbitMQ is refused at start-up, not retried forever

BAD_VHOST = f"amqp://guest:guest@{servers.RABBITMQ_HOST}:{servers.RABBITMQ_PORT}/no-such-vhost"
BAD_LOGIN = f"amqp://guest:not-it@{servers.RABBITMQ_HOST}:{servers.RABBITMQ_PORT}/"


@pytest.fixture
def rabbitmq() -> None:
    if not servers.rabbitmq_reachable():
        pytest.fail(f"no RabbitMQ at {servers.RABBITMQ_HOST}:{servers.RABBITMQ_PORT}")


@pytest.mark.parametrize(("url", "reason"), [
    (BAD_VHOST, "access to vhost 'no-such-vhost' was denied"),
    (BAD_LOGIN, "the login was refused (user or password)"),
], ids=["vhost", "password"])
def test_a_rabbitmq_refusing_the_login_or_vhost_is_a_configuration_error_after_a_few_tries(
    rabbitmq: None, monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    monkeypatch.setattr(wiring, "BROKER_REFUSAL_PAUSE_S", 0.01)
    with pytest.raises(ConfigurationError) as refused:
        check_broker(RabbitmqBroker(url=url), url)
    assert reason in str(refused.value)
    assert "check the user, password and vhost of ES_BROKER_URL" in str(refused.value)
    assert "not-it" not in str(refused.value)


def test_an_unreachable_rabbitmq_is_an_outage_not_refused() -> None:
    url = "amqp://guest:guest@127.0.0.1:1/"
    check_broker(RabbitmqBroker(url=url), url)  # Dramatiq waits it out


def test_publish_and_worker_exit_2_naming_the_vhost_instead_of_retrying_forever(
    rabbitmq: None, tmp_path: Path
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ES_")},
           "ES_REDIS_URL": REDIS_URL, "ES_PREFIX": prefix, "ES_BROKER_URL": BAD_VHOST,
           "PYTHONPATH": str(ROOT)}
    try:
        for command in ("publish", "worker"):
            done = subprocess.run([ES_WORKERS, command, "examples.bank:store"], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, done.stderr
            assert "access to vhost 'no-such-vhost' was denied" in done.stderr
            assert "3 times: check the user, password and vhost of ES_BROKER_URL" in done.stderr
            assert "Traceback" not in done.stderr  # pika's own lines are quiet meanwhile
    finally:
        delete_prefix(real_redis(), prefix)
