"""examples/fastapi_app.py through httpx's ASGI transport: a deposit is written by an async
endpoint, relayed to the `async def` subscriber `balances`, and read back from its read
model (read-your-writes: write, wait for the projection, read)."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncIterator, Iterator
from types import ModuleType

import fakeredis
import httpx
import pytest

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
async def http(
    example: ModuleType, workers: Store, read_models: fakeredis.FakeServer
) -> AsyncIterator[httpx.AsyncClient]:
    """The web app on the same events (the workers' InMemoryStorage) and read models."""
    assert isinstance(workers.storage, InMemoryStorage)
    web = AsyncStore(AsyncInMemoryStorage(workers.storage), events=example.EVENTS,
                     bus=workers.bus)
    balances = example.Balances(fakeredis.FakeAsyncRedis(server=read_models), "t")
    transport = httpx.ASGITransport(app=example.create_app(web, balances))
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

    again = await http.post("/accounts/a1/deposits", json={"amount": 7})
    await projected(workers, "a1", again.json()["event_number"])
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
    assert (await http.post("/accounts/a3/deposits", json={"amount": -1})).status_code == 422
    assert (await http.get("/accounts/a3")).status_code == 404
