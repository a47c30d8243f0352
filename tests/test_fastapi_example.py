"""examples/fastapi_app.py through httpx's ASGI transport: a deposit is written by an async
endpoint, relayed to the `async def` subscriber `balances`, and read back from its read
model (read-your-writes: write, wait for the projection, read)."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any
from urllib.parse import quote

import fakeredis
import httpx
import pytest
import redis
import schemathesis
from conftest import client_beside, events_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_workers import AsyncInMemoryStorage, AsyncStore, InMemoryStorage, Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example module; its own wiring (module level) on the embedded Redis, not ours."""
    monkeypatch.delenv("ES_REDIS_URL", raising=False)
    return importlib.import_module("examples.fastapi_app")


@pytest.fixture
def read_models() -> fakeredis.FakeServer:
    return fakeredis.FakeServer(version=(7, 0))


@pytest.fixture
def workers(example: ModuleType, read_models: fakeredis.FakeServer) -> Iterator[Store]:
    """The workers' side in memory: `balances` on the in-memory bus, relayed by start()."""
    store = Store(InMemoryStorage(), events=example.EVENTS)
    example.subscribe(store, example.Balances(fakeredis.FakeAsyncRedis(server=read_models), "t"))
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    yield store
    store.close()
    thread.join(timeout=10)


@pytest.fixture
def web_app(example: ModuleType, workers: Store, read_models: fakeredis.FakeServer) -> Any:
    """The web app on the same events (the workers' InMemoryStorage) and read models."""
    assert isinstance(workers.storage, InMemoryStorage)
    web = AsyncStore(AsyncInMemoryStorage(workers.storage), events=example.EVENTS,
                     bus=workers.bus)
    balances = example.Balances(fakeredis.FakeAsyncRedis(server=read_models), "t")
    return example.create_app(web, balances)


@pytest.fixture
async def http(web_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=web_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def projected(workers: Store, account_id: str, event_number: int) -> None:
    """Read-your-writes: waits until `balances` handled the account up to `event_number`."""
    await asyncio.to_thread(
        workers.wait_for, "account", account_id, event_number, subscriber_ids=["balances"]
    )


async def test_a_deposit_is_read_back_from_the_projection(
    http: httpx.AsyncClient, workers: Store
) -> None:
    assert (await http.get("/accounts/a1")).status_code == 404

    written = await http.post("/accounts/a1/deposits", json={"amount": 5})
    assert written.json() == {"account_id": "a1", "event_number": 2}  # Opened, Deposited
    await projected(workers, "a1", 2)
    assert (await http.get("/accounts/a1")).json() == {
        "account_id": "a1", "balance": 5, "event_number": 2
    }

    # ?wait=true: the endpoint waits for the projection (AsyncStore.wait_for), so the read
    # right after sees the write.
    await http.post("/accounts/a1/deposits", json={"amount": 7}, params={"wait": "true"})
    assert (await http.get("/accounts/a1")).json()["balance"] == 12


async def test_concurrent_deposits_each_get_a_number_and_all_count(
    http: httpx.AsyncClient, workers: Store
) -> None:
    answers = await asyncio.gather(
        *(http.post("/accounts/a2/deposits", json={"amount": n}) for n in range(1, 21))
    )

    numbers = sorted(answer.json()["event_number"] for answer in answers)
    assert numbers == list(range(2, 22))  # Opened is 1; each deposit its own number
    await projected(workers, "a2", 21)
    assert (await http.get("/accounts/a2")).json()["balance"] == sum(range(1, 21))


async def test_a_bad_amount_is_refused_and_writes_nothing(http: httpx.AsyncClient) -> None:
    for amount in (-1, True, "5", 2.5):  # the schema says integer: no bool, text or float
        answer = await http.post("/accounts/a3/deposits", json={"amount": amount})
        assert answer.status_code == 422, (amount, answer.text)
    assert (await http.get("/accounts/a3")).status_code == 404


async def test_a_read_model_update_that_fails_midway_loses_no_deposit_on_retry(
    example: ModuleType, redis_client: redis.Redis, prefix: str, request: pytest.FixtureRequest
) -> None:
    """Redis does not roll back a MULTI whose command failed: the update and its guard must
    be one step, so the handler's retry (at least once) applies the deposit."""
    client = client_beside(redis_client, request, decode_responses=False, use_asyncio=True)
    balances = example.Balances(client, prefix)
    opened, deposited = events_of("acc", example.Opened(owner="ann"),
                                  example.Deposited(amount=5))
    await balances.apply(opened)
    key = balances.key("acc")
    await client.hset(key, "balance", "not a number")  # the balance update will fail

    with pytest.raises(redis.ResponseError):
        await balances.apply(deposited)
    assert await client.hget(key, "event_number") == b"1"  # the guard stayed behind

    await client.hset(key, "balance", "0")  # repaired; the bus delivers the event again
    await balances.apply(deposited)
    assert await balances.get("acc") == {"balance": 5, "event_number": 2}
    await balances.apply(deposited)  # and a repeated delivery still counts once
    assert await balances.get("acc") == {"balance": 5, "event_number": 2}
    await client.aclose()


@pytest.mark.parametrize("account_id", ["x" * 201, "tab\there", "a\x00b", "del\x7f"])
async def test_an_invalid_account_id_is_refused_with_422_naming_it(
    http: httpx.AsyncClient, account_id: str
) -> None:
    for answer in (await http.post(f"/accounts/{quote(account_id)}/deposits",
                                   json={"amount": 5}),
                   await http.get(f"/accounts/{quote(account_id)}")):
        assert answer.status_code == 422, answer.text
        (problem,) = answer.json()["detail"]
        assert problem["loc"] == ["path", "account_id"]
        assert problem["input"] == account_id


def test_the_openapi_schema_documents_the_answers_and_the_account_id_rule(web_app: Any) -> None:
    schema = web_app.openapi()
    deposit = schema["paths"]["/accounts/{account_id}/deposits"]["post"]
    account = schema["paths"]["/accounts/{account_id}"]["get"]
    assert set(deposit["responses"]) == {"200", "400", "409", "422", "504"}
    assert set(account["responses"]) == {"200", "404", "422"}
    for operation in (deposit, account):
        (parameter,) = [p for p in operation["parameters"] if p["name"] == "account_id"]
        rule = parameter["schema"]
        assert (rule["minLength"], rule["maxLength"]) == (1, 200)
        assert "pattern" in rule and parameter["description"]


# A bounded schemathesis run: requests generated from the app's own OpenAPI schema (valid and
# invalid account IDs, amounts, ?wait), each answer checked against what the schema documents
# (status codes, bodies, content types) and never a 5xx. Driven by hypothesis' @given rather
# than schemathesis' pytest fixture loader, which reads a private attribute pytest 9.2 dropped.
def test_every_answer_is_one_the_openapi_schema_documents(web_app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", web_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 2
    for operation in operations:
        cases = st.one_of(*(operation.as_strategy(mode) for mode in schemathesis.GenerationMode))

        @given(case=cases)
        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate()

        answers_as_documented()
