"""ES_REDIS_USERNAME and ES_REDIS_PASSWORD reach every connection to the events' Redis: one
Redis, a Redis Cluster, Sentinel's primary, the asyncio clients, the Dramatiq broker on the
same Redis and the `es-workers` command; credentials given twice must agree; the secret is
never shown. Against servers of the run's own: one with `requirepass`, ACL users."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import Opened, delete_prefix
from halves import close, store_from_settings
from servers import AclUser, RedisClusterServers, RedisSentinelServers, RedisServer

from es_workers import ConfigurationError, RedisStorage, Settings, Store
from es_workers.settings import load_settings
from es_workers.workers.broker import WakingRedisBroker

ROOT = Path(__file__).resolve().parent.parent
ES_WORKERS = str(Path(sys.executable).parent / "es-workers")

pytestmark = pytest.mark.servers


@pytest.fixture
def prefix(redis_password_server: RedisServer) -> Iterator[str]:
    name = f"cred-{uuid.uuid4().hex[:8]}"
    yield name
    with redis_password_server.client() as client:
        delete_prefix(client, name)


def password_of(server: RedisServer) -> str:
    return str(server.client_options["password"])


def write_and_read_back(settings: Settings, half: str = "sync", entity_id: str = "a1"
                        ) -> list[int]:
    """Writes an event through a store of the half built from the settings, reads it back
    through one of the other half, and pings the Store's broker: every client they build."""
    other = "async" if half == "sync" else "sync"
    store = store_from_settings(half, settings)
    try:
        store.open("account", entity_id).write(Opened(owner="ann"))
        if isinstance(store, Store):
            broker = store.bus.broker  # type: ignore[union-attr]
            if isinstance(broker, WakingRedisBroker):
                assert broker.client.ping()
    finally:
        close(store)
    reader = store_from_settings(other, settings)
    try:
        return [event.event_number for event in reader.read("account", entity_id)]
    finally:
        close(reader)


def test_the_password_setting_reaches_every_client_of_one_redis(
    half: str, redis_password_server: RedisServer, prefix: str
) -> None:
    settings = Settings(redis_url=redis_password_server.url, prefix=prefix,
                        redis_password=password_of(redis_password_server))
    assert write_and_read_back(settings, half) == [1]


def test_the_user_and_password_settings_reach_every_client_as_an_acl_user(
    half: str, redis_password_server: RedisServer, prefix: str
) -> None:
    username, password = f"user-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with redis_password_server.client() as admin:
        admin.execute_command("ACL SETUSER", username, "on", f">{password}", "resetkeys",
                              f"~{prefix}:*", "resetchannels", f"&{prefix}:*", "+@all",
                              "-@admin", "-@dangerous")
    try:
        settings = Settings(redis_url=redis_password_server.url, prefix=prefix,
                            redis_username=username, redis_password=password)
        assert write_and_read_back(settings, half) == [1]
    finally:
        with redis_password_server.client() as admin:
            admin.acl_deluser(username)


@contextlib.contextmanager
def cluster_user(cluster: RedisClusterServers) -> Iterator[tuple[str, str]]:
    """An ACL user on every node, whose default user needs a password meanwhile (so that a
    client without the user's credentials is refused); the default user is open again
    afterwards (connections it already has stay authenticated)."""
    username, password = f"cluster-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    for node in cluster.nodes:
        with node.client() as client:
            client.execute_command("ACL SETUSER", username, "on", f">{password}", "~*", "&*",
                                   "+@all")
            client.execute_command("ACL SETUSER", "default", "resetpass",
                                   f">{uuid.uuid4().hex}")
    try:
        yield username, password
    finally:
        for node in cluster.nodes:
            with node.client(username=username, password=password) as client:
                client.execute_command("ACL SETUSER", "default", "nopass")
                client.acl_deluser(username)


def test_the_user_and_password_settings_reach_every_node_of_a_cluster(
    half: str, redis_cluster: RedisClusterServers,
) -> None:
    prefix = f"cred-{uuid.uuid4().hex[:8]}"
    with cluster_user(redis_cluster) as (username, password):
        settings = Settings(redis_url=redis_cluster.urls[0], redis_cluster="auto",
                            broker_url="stub://", prefix=prefix, redis_username=username,
                            redis_password=password)
        assert write_and_read_back(settings, half) == [1]
    with redis_cluster.client() as client:
        delete_prefix(client, prefix)  # type: ignore[arg-type]


def test_both_halves_follow_the_sentinels(
    half: str, redis_sentinel: RedisSentinelServers,
) -> None:
    settings = Settings(
        redis_sentinels=",".join(f"{h}:{p}" for h, p in redis_sentinel.sentinel_addresses),
        redis_sentinel_master=redis_sentinel.master_name, prefix=f"cred-{uuid.uuid4().hex[:8]}",
    )
    try:
        assert write_and_read_back(settings, half) == [1]  # not an empty embedded Redis
    finally:
        with redis_sentinel.primary().client() as client:
            delete_prefix(client, settings.prefix)


def test_both_halves_write_and_read_over_tls(half: str, redis_tls: str) -> None:
    """A rediss:// URL (with its CA file) reaches the events' Redis over TLS on both halves."""
    settings = Settings(redis_url=redis_tls, prefix=f"tls-{uuid.uuid4().hex[:8]}",
                        broker_url="stub://")
    try:
        assert write_and_read_back(settings, half) == [1]
    finally:
        with redis.Redis.from_url(redis_tls) as client:
            delete_prefix(client, settings.prefix)


def test_both_halves_run_as_an_acl_user_confined_to_its_prefix(
    half: str, redis_acl: AclUser
) -> None:
    """No @admin, no @dangerous (CONFIG GET refused: the eviction check is skipped, not
    failed), keys and channels of its prefix only."""
    settings = Settings(redis_url=redis_acl.url, prefix=redis_acl.prefix,
                        broker_url="stub://")
    assert write_and_read_back(settings, half) == [1]


def test_the_cli_uses_the_password_setting_and_never_shows_it(
    redis_password_server: RedisServer, prefix: str
) -> None:
    password = password_of(redis_password_server)
    write_and_read_back(Settings(redis_url=redis_password_server.url, prefix=prefix,
                                 redis_password=password))
    env = dict(os.environ, ES_REDIS_URL=redis_password_server.url, ES_PREFIX=prefix,
               ES_REDIS_PASSWORD=password, PYTHONPATH=str(ROOT / "tests"))
    for command in (["status", "settings_app:store"], ["show", "settings_app:store", "account",
                                                       "a1"], ["config"]):
        done = subprocess.run([ES_WORKERS, *command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert password not in done.stdout + done.stderr


@pytest.mark.parametrize("field", ["redis_password", "redis_username"])
def test_credentials_in_the_url_and_in_settings_must_agree(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    monkeypatch.setenv("ES_REDIS_URL", "redis://app-user:url-s3cret@127.0.0.1:6379/0")
    monkeypatch.setenv(f"ES_{field.upper()}", "other-s3cret")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    what = field.removeprefix("redis_")
    assert f"ES_REDIS_URL holds a {what} and ES_{field.upper()} another one" in str(raised.value)
    assert "s3cret" not in str(raised.value)

    same = "url-s3cret" if field == "redis_password" else "app-user"
    monkeypatch.setenv(f"ES_{field.upper()}", same)
    assert load_settings().redis_url is not None  # the same in both places is fine


def test_a_missing_or_wrong_password_is_a_configuration_error_saying_what_to_set(
    redis_password_server: RedisServer,
) -> None:
    """Not redis-py's bare "Authentication required."; the password is never shown."""
    with pytest.raises(ConfigurationError) as missing:
        RedisStorage(redis.Redis.from_url(redis_password_server.url))
    assert "needs a password" in str(missing.value)
    assert "set ES_REDIS_PASSWORD" in str(missing.value)

    with pytest.raises(ConfigurationError) as wrong:
        RedisStorage(redis.Redis.from_url(redis_password_server.url, password="not-it-x"))
    assert "refused the credentials" in str(wrong.value)
    assert "check ES_REDIS_PASSWORD" in str(wrong.value) and "not-it-x" not in str(wrong.value)
