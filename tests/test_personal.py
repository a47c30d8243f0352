"""Guarantee 13: personal fields never reach Redis in plain text; after `forget`, no copy
anywhere can be decrypted, and every event still reads (issue 23)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from typing import Annotated, Any

import fakeredis
import pytest
import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field

from es_workers import (
    AsyncRedisStorage,
    AsyncStore,
    Content,
    EncryptionError,
    EsError,
    Event,
    InMemoryEventBus,
    InMemoryStorage,
    MasterKeys,
    Personal,
    RedisStorage,
    Store,
    SubjectForgotten,
)
from es_workers.encryption import new_master_key
from es_workers.forgetting import FORGOTTEN_TYPE
from es_workers.personal import FORGOTTEN_TEXT, PersonalFieldError

EMAIL = "ada.lovelace@example.org"
STREET = "12 Analytical Engine Row"


class Registered(Content):
    name: Annotated[str, Personal]
    email: Annotated[str | None, Personal]
    born: Annotated[date | None, Personal] = None
    plan: str


class Ordered(Content):
    personal_subject = "customer_id"
    customer_id: str
    address: Annotated[str, Personal]
    items: int


EVENTS: dict[str, list[type[Content]]] = {"customer": [Registered], "order": [Ordered]}
KEY = new_master_key()


def secret_values(tag: str) -> tuple[str, str]:
    return f"{EMAIL}-{tag}", f"{STREET}-{tag}"


def write_customer(store: Store, customer: str, tag: str) -> None:
    email, street = secret_values(tag)
    with store.open("customer", customer) as stream:
        stream.write(Registered(name=f"Ada {tag}", email=email, born=date(1815, 12, 10),
                                plan="gold"))
    with store.open("order", f"order-of-{customer}") as stream:
        stream.write(Ordered(customer_id=customer, address=street, items=3))


def every_value(client: Any, pattern: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for every value of every key matching `pattern`, whatever its type."""
    for key in client.scan_iter(pattern, count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [x for pair in client.hgetall(key).items() for x in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [x for _, fields in client.xrange(key) for pair in fields.items()
                      for x in pair]
        else:
            values = []
        for value in values:
            yield key, value if isinstance(value, bytes) else str(value).encode()


def assert_no_plain_text(client: Any, pattern: str, *secrets: str) -> int:
    """Fails naming the key if any value holds one of `secrets`; returns values seen."""
    seen = 0
    for key, value in every_value(client, pattern):
        seen += 1
        for secret in secrets:
            assert secret.encode() not in value, f"{secret!r} in plain text in {key!r}"
    return seen


def envelopes_in(client: Any, pattern: str) -> list[str]:
    found = []
    for _, value in every_value(client, pattern):
        for part in value.split(b'"'):
            if part.startswith((b"es1:", b"es2:")):
                found.append(part.decode())
    return found


# -- Marking -----------------------------------------------------------------------------


def test_a_personal_field_must_hold_its_forgotten_placeholder() -> None:
    with pytest.raises(PersonalFieldError, match=r"Age.years .*None"):
        class Age(Content):
            years: Annotated[int, Personal]

    class AgeOrNone(Content):  # allowed: None, or the default
        years: Annotated[int | None, Personal]
        months: Annotated[int, Personal] = 0


def test_the_subject_field_must_be_a_plain_field() -> None:
    with pytest.raises(PersonalFieldError, match="personal_subject"):
        class Bad(Content):
            personal_subject = "email"
            email: Annotated[str, Personal]


def test_personal_is_usable_as_a_class_or_an_instance() -> None:
    class Both(Content):
        a: Annotated[str, Personal]
        b: Annotated[str, Personal()]

    store = Store(InMemoryStorage(encryption=MasterKeys(KEY)), events={"x": [Both]})
    with store.open("x", "1") as stream:
        stream.write(Both(a="A", b="B"))
    assert [e.content for e in store.open("x", "1").all()] == [Both(a="A", b="B")]


# -- Without a master key ------------------------------------------------------------------


def test_without_a_master_key_writing_a_personal_field_is_refused() -> None:
    store = Store(InMemoryStorage(), events=EVENTS)
    with pytest.raises(EncryptionError, match="ES_ENCRYPTION_KEY"), \
            store.open("customer", "c1") as stream:
        stream.write(Registered(name="Ada", email=EMAIL, plan="gold"))
    assert list(store.open("customer", "c1").all()) == []
    assert isinstance(EncryptionError("x"), EsError)


def test_a_master_key_that_is_not_one_is_refused_without_quoting_it() -> None:
    with pytest.raises(EsError) as raised:
        MasterKeys("not-a-key-secret")
    assert "not-a-key-secret" not in str(raised.value)


# -- On every Redis backend ------------------------------------------------------------------


@pytest.fixture
def encrypted(redis_client: redis.Redis, prefix: str) -> Store:
    return Store(RedisStorage(redis_client, prefix=prefix, encryption=MasterKeys(KEY)),
                 events=EVENTS)


def test_personal_fields_never_reach_redis_in_plain_text(
    encrypted: Store, redis_client: redis.Redis, prefix: str
) -> None:
    handled: list[Event] = []
    encrypted.subscribe("customer", "copies", handled.append)
    write_customer(encrypted, "c1", "one")
    email, street = secret_values("one")
    assert assert_no_plain_text(redis_client, f"{prefix}:*", email, street, "Ada one") > 0
    # one per event: name, email and born sealed together; address
    assert len(envelopes_in(redis_client, f"{prefix}:*")) == 2
    # ...and every read decrypts them transparently.
    [customer] = encrypted.open("customer", "c1").all()
    assert customer.content == Registered(name="Ada one", email=email,
                                          born=date(1815, 12, 10), plan="gold")
    assert not customer.forgotten
    [order] = list(encrypted.read("order", "order-of-c1"))
    assert order.content.address == street


def test_forget_leaves_events_readable_with_placeholders(
    encrypted: Store, redis_client: redis.Redis, prefix: str
) -> None:
    write_customer(encrypted, "c1", "one")
    write_customer(encrypted, "c2", "two")
    assert encrypted.forget("c1") == 1

    [customer] = encrypted.open("customer", "c1").all()
    assert customer.forgotten
    assert customer.content == Registered(name=FORGOTTEN_TEXT, email=FORGOTTEN_TEXT,
                                          born=None, plan="gold")
    [order] = encrypted.open("order", "order-of-c1").all()
    assert order.forgotten and order.content.address == FORGOTTEN_TEXT
    assert order.content.items == 3  # plain fields stay
    # The other customer is untouched.
    [other] = encrypted.open("customer", "c2").all()
    assert not other.forgotten and other.content.email == secret_values("two")[0]
    # The record of the forget, as an event subscribers can follow.
    assert [e.content for e in encrypted.open(FORGOTTEN_TYPE, "c1").all()] == [
        SubjectForgotten(subject="c1")]


def test_after_forget_no_key_the_system_holds_decrypts_the_ciphertext(
    encrypted: Store, redis_client: redis.Redis, prefix: str
) -> None:
    write_customer(encrypted, "c1", "one")
    write_customer(encrypted, "c2", "two")
    c1_envelopes = [e for e in envelopes_in(redis_client, f"{prefix}:*")]
    encrypted.forget("c1")

    master = MasterKeys(KEY)
    held = [AESGCM(base64.b64decode(KEY))]  # the master key itself
    for key_id, wrapped in encrypted.storage.keyring.store.wrapped_keys():  # type: ignore[union-attr]
        held.append(AESGCM(master.unwrap(key_id, wrapped)))
    readable = 0
    for envelope in c1_envelopes:
        form, key_id, blob = envelope.split(":")
        nonce_sealed = base64.b64decode(blob)
        for aead in held:
            try:
                aead.decrypt(nonce_sealed[:12], nonce_sealed[12:], f"{form}:{key_id}".encode())
                readable += 1
            except InvalidTag:
                pass
    assert readable == 2  # c2's two events; none of c1's
    assert len(c1_envelopes) == 4


def test_forget_is_idempotent_and_finishes_after_a_crash(encrypted: Store) -> None:
    write_customer(encrypted, "c1", "one")
    # A forget that destroyed the key and died before recording the notice:
    encrypted.storage.keyring.forget("c1")  # type: ignore[union-attr]
    assert list(encrypted.open(FORGOTTEN_TYPE, "c1").all()) == []
    assert encrypted.forget("c1") == 1  # run again: the notice is written
    assert encrypted.forget("c1") == 1  # and again: nothing more
    assert len(list(encrypted.open(FORGOTTEN_TYPE, "c1").all())) == 1
    assert encrypted.forget("never-seen") == 0


def test_a_forgotten_subject_writing_again_gets_a_new_key(encrypted: Store) -> None:
    write_customer(encrypted, "c1", "one")
    encrypted.forget("c1")
    with encrypted.open("customer", "c1") as stream:
        list(stream.all())
        stream.write(Registered(name="Ada again", email="new@example.org", plan="free"))
    first, second = encrypted.open("customer", "c1").all()
    assert first.forgotten and not second.forgotten
    assert second.content.email == "new@example.org"
    encrypted.forget("c1")
    assert len(list(encrypted.open(FORGOTTEN_TYPE, "c1").all())) == 2
    assert all(e.forgotten for e in encrypted.open("customer", "c1").all())


def test_a_forget_reaches_the_cache_of_another_process(
    encrypted: Store, redis_client: redis.Redis, prefix: str
) -> None:
    other = Store(RedisStorage(redis_client, prefix=prefix, encryption=MasterKeys(KEY)),
                  events=EVENTS)
    write_customer(encrypted, "c1", "one")
    assert not next(iter(other.open("customer", "c1").all())).forgotten  # key now cached
    encrypted.forget("c1")
    assert next(iter(other.open("customer", "c1").all())).forgotten
    assert next(iter(other.read("order", "order-of-c1"))).forgotten


def test_rotation_rewraps_data_keys_without_touching_events(
    redis_client: redis.Redis, prefix: str
) -> None:
    old = Store(RedisStorage(redis_client, prefix=prefix, encryption=MasterKeys(KEY)),
                events=EVENTS)
    write_customer(old, "c1", "one")
    streams_before = {k: redis_client.xrange(k) for k in redis_client.scan_iter(
        f"{prefix}:*stream*")}
    new_key = new_master_key()
    rotating = Store(RedisStorage(redis_client, prefix=prefix,
                                  encryption=MasterKeys(new_key, [KEY])), events=EVENTS)
    assert rotating.rotate_keys() == 1
    assert rotating.rotate_keys() == 0
    assert {k: redis_client.xrange(k) for k in streams_before} == streams_before
    only_new = Store(RedisStorage(redis_client, prefix=prefix,
                                  encryption=MasterKeys(new_key)), events=EVENTS)
    [customer] = only_new.open("customer", "c1").all()
    assert customer.content.email == secret_values("one")[0]
    with pytest.raises(EsError, match="ES_ENCRYPTION_KEYS"):
        list(Store(RedisStorage(redis_client, prefix=prefix,
                                encryption=MasterKeys(new_master_key())),
                   events=EVENTS).open("customer", "c1").all())


def test_subscribers_see_decrypted_events_then_forgotten_ones(encrypted: Store) -> None:
    bus = InMemoryEventBus()
    store = Store(encrypted.storage, bus=bus, events=EVENTS)
    seen: list[Event] = []
    forgets: list[str] = []
    store.subscribe("customer", "copies", seen.append)
    store.subscribe(FORGOTTEN_TYPE, "copies", lambda e: forgets.append(e.content.subject))
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        write_customer(store, "c1", "one")
        store.wait_for("customer", "c1", 1)
        store.forget("c1")
        store.wait_for(FORGOTTEN_TYPE, "c1", 1)
    finally:
        store.close()
        thread.join(5)
    assert seen[0].content.email == secret_values("one")[0]
    assert forgets == ["c1"]


# -- asyncio ---------------------------------------------------------------------------------


def test_async_store_encrypts_reads_and_forgets(
    redis_client: redis.Redis, prefix: str, request: pytest.FixtureRequest
) -> None:
    from conftest import client_beside

    async def scenario() -> None:
        client = client_beside(redis_client, request, decode_responses=False, use_asyncio=True)
        store = AsyncStore(AsyncRedisStorage(client, prefix=prefix,
                                             encryption=MasterKeys(KEY)), events=EVENTS)
        async with store.open("customer", "c1") as stream:
            await stream.write(Registered(name="Ada", email=EMAIL, plan="gold"))
        assert_no_plain_text(redis_client, f"{prefix}:*", EMAIL)
        [event] = [e async for e in store.read("customer", "c1")]
        assert event.content.email == EMAIL and not event.forgotten
        assert await store.forget("c1") == 1
        assert await store.forget("c1") == 1
        assert await store.rotate_keys() == 0  # one master key: nothing to re-wrap
        [event] = [e async for e in store.read("customer", "c1")]
        assert event.forgotten and event.content.email == FORGOTTEN_TEXT
        async with store.open("customer", "c2") as stream:
            await stream.write(Registered(name="Bob", email="bob@example.org", plan="free"))
        await store.close()
        new_key = new_master_key()
        rotating = AsyncStore(AsyncRedisStorage(
            client_beside(redis_client, request, decode_responses=False, use_asyncio=True),
            prefix=prefix, encryption=MasterKeys(new_key, [KEY])), events=EVENTS)
        assert await rotating.rotate_keys() == 1  # c2's key; c1's is gone
        await rotating.close()
        only_new = AsyncStore(AsyncRedisStorage(
            client_beside(redis_client, request, decode_responses=False, use_asyncio=True),
            prefix=prefix, encryption=MasterKeys(new_key)), events=EVENTS)
        [bob] = [e async for e in only_new.read("customer", "c2")]
        assert bob.content.email == "bob@example.org"
        await only_new.close()

    asyncio.run(scenario())
    # The sync side reads what the async side wrote, and agrees it was forgotten.
    sync = Store(RedisStorage(redis_client, prefix=prefix, encryption=MasterKeys(KEY)),
                 events=EVENTS)
    assert next(iter(sync.open("customer", "c1").all())).forgotten
    assert len(list(sync.open(FORGOTTEN_TYPE, "c1").all())) == 1


def test_a_key_fetched_before_a_forget_does_not_enter_the_cache_after_a_drop() -> None:
    from es_workers.encryption import KeyCache

    cache = KeyCache()
    cache.seen_version(0)
    generation = cache.generation  # a reader starts fetching a key...
    cache.seen_version(1)  # ...a forget lands and another reader drops the cache
    cache.put_key("k", object(), generation)
    cache.put_subject("s", "k", generation)
    cache.put_opened(b"{}", (b"{}", False), generation)
    assert cache.key("k") == (False, None)
    assert not cache.subjects and not cache.opened


# -- In memory ---------------------------------------------------------------------------------


def test_in_memory_storage_encrypts_and_forgets_too() -> None:
    store = Store(InMemoryStorage(encryption=MasterKeys(KEY)), events=EVENTS)
    write_customer(store, "c1", "one")
    assert store.forget("c1") == 1
    assert next(iter(store.open("order", "order-of-c1").all())).forgotten


def test_async_store_on_memory_forgets_too() -> None:
    from es_workers import AsyncInMemoryStorage

    async def scenario() -> None:
        store = AsyncStore(AsyncInMemoryStorage(InMemoryStorage(encryption=MasterKeys(KEY))),
                           events=EVENTS)
        async with store.open("customer", "c1") as stream:
            await stream.write(Registered(name="Ada", email=EMAIL, plan="gold"))
        assert await store.forget("c1") == 1
        [event] = [e async for e in store.read("customer", "c1")]
        assert event.forgotten and event.content.name == FORGOTTEN_TEXT
        assert await store.rotate_keys() == 0

    asyncio.run(scenario())


def test_forget_without_a_master_key_says_what_to_set() -> None:
    with pytest.raises(EsError, match="ES_ENCRYPTION_KEY"):
        Store(InMemoryStorage(), events=EVENTS).forget("c1")


def test_a_decrypted_payload_that_does_not_validate_is_reported_without_its_values() -> None:
    import traceback

    from es_workers import InvalidPayloadError

    class Then(Content):
        event_name = "Signed"
        email: Annotated[str, Personal]

    class Now(Content):
        event_name = "Signed"
        email: Annotated[int | None, Personal]

    server = fakeredis.FakeServer(version=(7, 0))

    def store(cls: type[Content]) -> Store:
        client = fakeredis.FakeRedis(server=server)
        return Store(RedisStorage(client, encryption=MasterKeys(KEY)), events={"x": [cls]})

    with store(Then).open("x", "1") as stream:
        stream.write(Then(email=EMAIL))
    with pytest.raises(InvalidPayloadError) as raised:
        list(store(Now).open("x", "1").all())
    assert "email" in str(raised.value)
    shown = "".join(traceback.format_exception(raised.value))
    assert EMAIL not in shown


def test_a_key_store_that_cannot_reach_redis_raises_storage_unavailable() -> None:
    from es_workers import StorageUnavailableError
    from es_workers.redis.keyring import RedisKeyStore

    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                              retry=None)
    store = RedisKeyStore(unreachable, "t-down")
    with pytest.raises(StorageUnavailableError):
        store.data_keys(["k"])
    with pytest.raises(StorageUnavailableError) as raised:
        store.forget("c1")
    assert raised.value.outcome_unknown  # a forget is safe to run again


class Measured(Content):
    height_cm: Annotated[int, Personal] = 170
    tags: Annotated[list[str], Personal] = Field(default_factory=list)
    note: Annotated[str | None, Personal] = "kept"


def test_a_forgotten_field_with_a_default_reads_as_its_default() -> None:
    store = Store(InMemoryStorage(encryption=MasterKeys(KEY)), events={"body": [Measured]})
    with store.open("body", "p1") as stream:
        stream.write(Measured(height_cm=181, tags=["a"], note="private"))
    assert next(iter(store.open("body", "p1").all())).content == Measured(
        height_cm=181, tags=["a"], note="private")
    store.forget("p1")
    [event] = store.open("body", "p1").all()
    assert event.forgotten
    assert event.content == Measured(height_cm=170, tags=[], note=FORGOTTEN_TEXT)


def test_a_field_marked_personal_later_reads_its_plain_values() -> None:
    class Before(Content):
        event_name = "Noted"
        text: str

    class After(Content):
        event_name = "Noted"
        text: Annotated[str, Personal]

    server = fakeredis.FakeServer(version=(7, 0))

    def store(cls: type[Content]) -> Store:
        client = fakeredis.FakeRedis(server=server)
        return Store(RedisStorage(client, encryption=MasterKeys(KEY)), events={"note": [cls]})

    with store(Before).open("note", "n1") as stream:
        stream.write(Before(text="written in clear"))
    later = store(After)
    with later.open("note", "n1") as stream:
        list(stream.all())
        stream.write(After(text="written encrypted"))
    assert [e.content.text for e in later.open("note", "n1").all()] == [
        "written in clear", "written encrypted"]


# -- The append-only file ------------------------------------------------------------------------


@pytest.mark.single_redis
def test_no_aof_file_holds_plain_text_nor_after_forget_the_data_key(
    redis_aof: Any,
) -> None:
    server = redis_aof()
    client = redis.Redis.from_url(server.url)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    store = Store(RedisStorage(client, prefix=prefix, encryption=MasterKeys(KEY)),
                  events=EVENTS)
    write_customer(store, "c1", "one")
    write_customer(store, "c2", "two")
    [(c1_key, wrapped)] = [
        (k, w) for k, w in store.storage.keyring.store.wrapped_keys()  # type: ignore[union-attr]
        if store.storage.keyring.store.subject_key("c1") == (k, w)  # type: ignore[union-attr]
    ]

    def aof_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in server.directory.rglob("*.aof*") if p.is_file())

    for tag in ("one", "two"):
        for secret in secret_values(tag):
            assert secret.encode() not in aof_bytes()
    assert wrapped.encode() in aof_bytes()
    store.forget("c1")
    deadline = time.monotonic() + 10
    while (client.info("persistence")["aof_rewrite_in_progress"]
           or wrapped.encode() in aof_bytes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wrapped.encode() not in aof_bytes(), "the destroyed data key is still in the AOF"
    assert c1_key.encode() in aof_bytes()  # its ciphertexts stay, undecryptable
    client.close()



# -- Delivery through Dramatiq -------------------------------------------------------------------


def test_dramatiq_subscribers_get_decrypted_events_and_queues_hold_no_plain_text(
    redis_client: redis.Redis, prefix: str, broker: Any
) -> None:
    from apps.delivery_kit import FAST_PUBLISHER, Delivery, Recorder
    from kit import wait_for

    storage = RedisStorage(redis_client, prefix=prefix, publisher=FAST_PUBLISHER,
                           encryption=MasterKeys(KEY))
    delivery = Delivery(storage, broker, events=EVENTS)
    copies, forgets = Recorder(), Recorder()
    delivery.store.subscribe("customer", "copies", copies)
    delivery.store.subscribe(FORGOTTEN_TYPE, "copies-forget", forgets)
    try:
        for number in range(5):
            write_customer(delivery.store, f"c{number}", f"n{number}")
        # Queued before any worker runs: the notices wait in Dramatiq's queues.
        delivery.start_store()
        wait_for(lambda: storage.outbox_backlog() == 0, "the outbox to be relayed")
        secrets = [s for n in range(5) for s in secret_values(f"n{n}")]
        broker_client = broker.client
        assert assert_no_plain_text(broker_client, f"{broker.namespace}:*", *secrets) > 0
        delivery.start_worker(threads=2)
        wait_for(lambda: copies.count() == 5, "the five customers to be delivered")
        assert copies.contents["c3"][0].email == secret_values("n3")[0]
        delivery.store.forget("c3")
        wait_for(lambda: forgets.count() == 1, "the forget notice to be delivered")
        assert forgets.contents["c3"] == [SubjectForgotten(subject="c3")]
        assert_no_plain_text(redis_client, f"{prefix}:*", *secrets)
        assert_no_plain_text(broker_client, f"{broker.namespace}:*", *secrets)
    finally:
        delivery.stop()


# -- Real processes ------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.single_redis
def test_a_forget_in_one_process_reaches_a_worker_process_that_had_the_key_cached(
    tmp_path: Any,
) -> None:
    from conftest import REDIS_URL, delete_prefix, real_redis
    from kit import ES_WORKERS, ROOT, Processes, wait_for

    app = "tests.process_personal_app:store"
    client = real_redis()
    prefix = f"proc-{uuid.uuid4().hex[:10]}"
    key = new_master_key()
    env = dict(os.environ, ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, PYTHONPATH=str(ROOT),
               ES_ENCRYPTION_KEY=key, ES_REDRIVE_AFTER_MS="500")
    processes = Processes(env, tmp_path)

    def logged(name: str) -> list[str]:
        return [item.decode() for item in client.lrange(f"{prefix}:log:{name}", 0, -1)]

    def command(*args: str) -> None:
        done = subprocess.run([ES_WORKERS, *args], cwd=ROOT, env=env, capture_output=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr.decode()

    class Customer(Content):  # the app's Registered, declared here without importing it
        event_name = "Registered"
        email: Annotated[str, Personal]

    def digest(text: str) -> str:  # as the app logs it
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    try:
        processes.publisher(app)
        processes.worker(app)
        writer = Store(RedisStorage(client, prefix=prefix, encryption=MasterKeys(key)),
                       events={"customer": [Customer]})
        with writer.open("customer", "c1") as stream:
            stream.write(Customer(email=EMAIL))
        wait_for(lambda: logged("copies") == [f"c1:1:0:{digest(EMAIL)}"],
                 "the worker to handle the event, decrypted", timeout=60)
        command("forget", app, "c1", "--yes")  # a third process
        wait_for(lambda: logged("forgets") == ["c1"], "the forget notice", timeout=60)
        command("replay", app, "copies", "--yes")  # the worker reads c1 #1 again
        wait_for(lambda: len(logged("copies")) == 2, "the replay", timeout=60)
        assert logged("copies")[1] == f"c1:1:1:{digest(FORGOTTEN_TEXT)}"
        assert_no_plain_text(client, f"{prefix}*", EMAIL)
    finally:
        processes.stop_all()
        delete_prefix(client, prefix)
        client.close()


# -- Stored forms: sealed per content (es2), and per field (es1, written before) ------------


class Profile(Content):
    event_name = "Profile"
    name: Annotated[str, Personal]
    email: Annotated[str | None, Personal]
    plan: str


class ProfileAsStored(Content):
    """The same event name, every field plain: writes a stored form as it is."""

    event_name = "Profile"
    name: str
    email: str | None
    plan: str


def es1_envelope(store: Store, subject: str, value: Any) -> str:
    """A field sealed on its own, as events written before es2 hold it."""
    key_id, aead = store.storage.keyring.for_subject(subject)  # type: ignore[union-attr]
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, json_bytes(value), f"es1:{key_id}".encode())
    return (f"es1:{key_id}:{base64.b64encode(nonce).decode()}:"
            f"{base64.b64encode(sealed).decode()}")


def json_bytes(value: Any) -> bytes:
    import json
    return json.dumps(value).encode()


def stored_profiles(client: Any, prefix: str) -> list[bytes]:
    return [value for _, value in every_value(client, f"{prefix}:*")
            if b'"plan"' in value]


def test_a_content_s_personal_fields_are_sealed_together_in_one_ciphertext(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = Store(RedisStorage(redis_client, prefix=prefix, encryption=MasterKeys(KEY)),
                  events={"profile": [Profile]})
    with store.open("profile", "p1") as stream:
        stream.write(Profile(name="Ada", email=EMAIL, plan="gold"),
                     Profile(name="Ada", email=EMAIL, plan="gold"))
    stored = stored_profiles(redis_client, prefix)
    assert len(stored) == 2
    import json
    first, second = (json.loads(value) for value in stored)
    assert set(first) == {"plan", "_personal"} and first["plan"] == "gold"
    form, key_id, blob = first["_personal"].split(":")
    assert form == "es2"
    nonce_sealed = base64.b64decode(blob)
    aead = AESGCM(MasterKeys(KEY).unwrap(
        key_id, dict(store.storage.keyring.store.wrapped_keys())[key_id]))  # type: ignore[union-attr]
    assert json.loads(aead.decrypt(nonce_sealed[:12], nonce_sealed[12:],
                                   f"es2:{key_id}".encode())) == {"name": "Ada", "email": EMAIL}
    assert first["_personal"] != second["_personal"]  # same plain text, fresh nonce
    assert base64.b64decode(second["_personal"].split(":")[2])[:12] != nonce_sealed[:12]
    assert [e.content for e in store.open("profile", "p1").all()] == [
        Profile(name="Ada", email=EMAIL, plan="gold")] * 2


def test_events_written_with_fields_sealed_one_by_one_still_read_forget_and_rotate(
    redis_client: redis.Redis, prefix: str
) -> None:
    old_key, new_key = KEY, new_master_key()

    def store(cls: type[Content], keys: MasterKeys) -> Store:
        return Store(RedisStorage(redis_client, prefix=prefix, encryption=keys),
                     events={"profile": [cls]})

    current = store(Profile, MasterKeys(old_key))
    as_stored = store(ProfileAsStored, MasterKeys(old_key))
    for subject in ("p1", "p2"):
        with as_stored.open("profile", subject) as stream:  # the es1 form, as it was stored
            stream.write(ProfileAsStored(name=es1_envelope(current, subject, f"Ada {subject}"),
                                         email=es1_envelope(current, subject, EMAIL),
                                         plan="gold"))
        with current.open("profile", subject) as stream:  # then the es2 form
            list(stream.all())
            stream.write(Profile(name=f"Ada {subject}", email=None, plan="silver"))
    assert_no_plain_text(redis_client, f"{prefix}:*", EMAIL, "Ada p1")

    # a process that never read them, after a rotation of the master key
    rotated = store(Profile, MasterKeys(new_key, [old_key]))
    assert rotated.rotate_keys() == 2
    fresh = store(Profile, MasterKeys(new_key))
    assert [e.content for e in fresh.open("profile", "p1").all()] == [
        Profile(name="Ada p1", email=EMAIL, plan="gold"),
        Profile(name="Ada p1", email=None, plan="silver")]

    fresh.forget("p1")
    events = list(store(Profile, MasterKeys(new_key)).open("profile", "p1").all())
    assert [e.content for e in events] == [
        Profile(name=FORGOTTEN_TEXT, email=FORGOTTEN_TEXT, plan="gold"),
        Profile(name=FORGOTTEN_TEXT, email=FORGOTTEN_TEXT, plan="silver")]
    assert all(e.forgotten for e in events)
    [old, new] = fresh.open("profile", "p2").all()  # the other subject untouched
    assert (old.content.email, new.content.name) == (EMAIL, "Ada p2")


def test_a_content_with_only_personal_fields_and_an_altered_ciphertext() -> None:
    class Secret(Content):
        text: Annotated[str, Personal]

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
    store = Store(RedisStorage(client, encryption=MasterKeys(KEY)), events={"s": [Secret]})
    with store.open("s", "s1") as stream:
        stream.write(Secret(text="only this"))
    [stored] = [value for _, value in every_value(client, "*") if b"es2:" in value]
    assert stored.startswith(b'{"_personal":"es2:')
    assert [e.content.text for e in store.open("s", "s1").all()] == ["only this"]

    cipher = store.storage.registry.cipher  # type: ignore[union-attr]
    from es_workers.personal import personal_fields
    fields = personal_fields(Secret)
    altered = stored[:-4] + (b"A" if stored[-4:-3] != b"A" else b"B") + stored[-3:]
    with pytest.raises(EncryptionError, match="altered"):
        cipher.open(Secret, fields, altered)
    with pytest.raises(EncryptionError, match="malformed"):
        cipher.open(Secret, fields, b'{"_personal":"es2:nope"}')


def test_a_content_may_not_hold_an_extra_field_named_like_the_sealed_fields() -> None:
    from pydantic import ConfigDict

    class Loose(Content):
        model_config = ConfigDict(extra="allow")
        text: Annotated[str, Personal]

    store = Store(InMemoryStorage(encryption=MasterKeys(KEY)), events={"l": [Loose]})
    with store.open("l", "l1") as stream, pytest.raises(EncryptionError, match="_personal"):
        stream.write(Loose(text="x", _personal="mine"))  # type: ignore[call-arg]


def test_the_key_ids_an_async_read_loads_are_found_in_both_stored_forms() -> None:
    from es_workers.encryption import key_ids_in

    es1 = b'{"name":"es1:old-Key_1:bm9uY2U=:c2VhbGVk","plan":"gold"}'
    es2 = '{"plan":"gold","_personal":"es2:newKey-2:bm9uY2VzZWFsZWQ="}'
    assert key_ids_in([es1, es2, b'{"plan":"es3:x:y"}', None]) == {"old-Key_1", "newKey-2"}


def test_the_async_store_reads_both_stored_forms(
    redis_client: redis.Redis, prefix: str, request: pytest.FixtureRequest
) -> None:
    from conftest import client_beside

    keys = MasterKeys(KEY)
    as_stored = Store(RedisStorage(redis_client, prefix=prefix, encryption=keys),
                      events={"profile": [ProfileAsStored]})
    with as_stored.open("profile", "p1") as stream:  # the es1 form, as it was stored
        stream.write(ProfileAsStored(name=es1_envelope(as_stored, "p1", "Ada"), email=None,
                                     plan="gold"))

    async def scenario() -> list[Content]:
        store = AsyncStore(AsyncRedisStorage(
            client_beside(redis_client, request, decode_responses=False, use_asyncio=True),
            prefix=prefix, encryption=keys), events={"profile": [Profile]})
        async with store.open("profile", "p1") as stream:
            [_ async for _ in stream.all()]
            await stream.write(Profile(name="Ada", email=EMAIL, plan="silver"))
        fresh = AsyncStore(AsyncRedisStorage(  # a process that never read them
            client_beside(redis_client, request, decode_responses=False, use_asyncio=True),
            prefix=prefix, encryption=keys), events={"profile": [Profile]})
        contents = [e.content async for e in fresh.read("profile", "p1")]
        await store.close()
        await fresh.close()
        return contents

    assert asyncio.run(scenario()) == [Profile(name="Ada", email=None, plan="gold"),
                                       Profile(name="Ada", email=EMAIL, plan="silver")]


def test_personal_content_that_would_not_read_back_is_refused_like_plain_content() -> None:
    from es_workers import InvalidContentError

    class Note(Content):
        text: Annotated[str, Personal]
        extra: Annotated[Any, Personal] = None
        ratio: float = 0.0

    store = Store(InMemoryStorage(encryption=MasterKeys(KEY)), events={"n": [Note]})
    deep: Any = 0
    for _ in range(300):
        deep = [deep]
    with store.open("n", "n1") as stream:
        with pytest.raises(InvalidContentError, match="cannot be encoded"):
            stream.write(Note(text="\ud800"))
        with pytest.raises(InvalidContentError):
            stream.write(Note(text="ok", extra=deep))
        assert list(stream.all()) == []
        stream.write(Note(text="ok", ratio=1.5), Note(text="ok"))
    assert [e.content.ratio for e in store.open("n", "n1").all()] == [1.5, 0.0]


def test_one_write_for_several_subjects_seals_each_with_its_own_key(encrypted: Store) -> None:
    with encrypted.open("order", "o1") as stream:
        stream.write(Ordered(customer_id="c1", address="one", items=1),
                     Ordered(customer_id="c2", address="two", items=2),
                     Ordered(customer_id="c1", address="three", items=3))
    encrypted.forget("c2")
    events = list(encrypted.open("order", "o1").all())
    assert [(e.content.address, e.forgotten) for e in events] == [
        ("one", False), (FORGOTTEN_TEXT, True), ("three", False)]
    with encrypted.open("order", "o1") as stream:  # after the forget: c2's new key
        list(stream.all())
        stream.write(Ordered(customer_id="c2", address="four", items=4))
    assert [e.content.address for e in encrypted.open("order", "o1").all()][2:] == [
        "three", "four"]
