"""A FastAPI app on es_workers: accounts written from async endpoints, and an `async def`
subscriber keeping their balances.

- `POST /accounts/{account_id}/deposits` `{"amount": 5}` appends a `Deposited` event (an
  `Opened` first for a new account) through an `AsyncStore`, without blocking the event
  loop, and answers the account's new event number.
- `GET /accounts/{account_id}` answers the `balances` read model: the balance and the
  number of the last event it applied.
- `balances` is an `async def` handler of the workers' `Store`: `es-workers worker` runs
  it on Dramatiq's event loop. It writes the read model to Redis with an asyncio client.

Run it with a Redis at ES_REDIS_URL (from the directory holding `examples/`):

    es-workers publish examples.fastapi_app:store   # relays what the web app appends
    es-workers worker examples.fastapi_app:store    # runs `balances`
    uvicorn examples.fastapi_app:app                # pip install 'es_workers[web]'

The read model trails the write by the relay and the handler (a few ms): a client that
must read its own write waits until `event_number` reaches the one its write answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, PositiveInt
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from es_workers import AsyncStore, ConcurrencyError, Content, Event, Store
from es_workers.settings import load_settings
from es_workers.wiring import async_redis_client

ACCOUNT = "account"


class Opened(Content):
    owner: str


class Deposited(Content):
    amount: PositiveInt


EVENTS: dict[str, list[type[Content]]] = {ACCOUNT: [Opened, Deposited]}


class Balances:
    """The read model: a Redis hash per account, `balance` and `event_number` (the last
    event applied). Handlers run at least once, so an event at or below it is ignored."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, account_id: str) -> str:
        return f"{self.prefix}:fastapi:balance:{account_id}"

    async def apply(self, event: Event) -> None:
        key = self.key(event.entity_id)

        async def attempt(pipe: Pipeline) -> None:
            applied = int(await pipe.hget(key, "event_number") or 0)
            if event.event_number <= applied:
                return  # a repeated delivery
            pipe.multi()
            amount = event.content.amount if isinstance(event.content, Deposited) else 0
            pipe.hincrby(key, "balance", amount)
            pipe.hset(key, "event_number", event.event_number)

        await self.client.transaction(attempt, key)

    async def get(self, account_id: str) -> dict[str, int] | None:
        found = await self.client.hgetall(self.key(account_id))
        if not found:
            return None
        return {"balance": int(found[b"balance"]), "event_number": int(found[b"event_number"])}


class DepositRequest(BaseModel):
    amount: PositiveInt


async def deposit(store: AsyncStore, account_id: str, amount: int, attempts: int = 20) -> int:
    """Appends a deposit (opening a new account first); on a concurrent write, reads again.
    Returns the account's event number after the deposit."""
    for _ in range(attempts):
        async with store.open(ACCOUNT, account_id) as stream:
            async for _event in stream.all():
                pass
            contents: list[Content] = [] if stream.position else [Opened(owner=account_id)]
            try:
                await stream.write(*contents, Deposited(amount=amount))
            except ConcurrencyError:
                continue
            return stream.position
    raise HTTPException(409, f"account {account_id!r} is too busy, try again")


def create_app(store: AsyncStore, balances: Balances) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await store.close()  # its Redis client (the workers' bus is not the app's to close)

    app = FastAPI(title="es_workers accounts", lifespan=lifespan)

    @app.post("/accounts/{account_id}/deposits")
    async def post_deposit(account_id: str, request: DepositRequest) -> dict[str, object]:
        number = await deposit(store, account_id, request.amount)
        return {"account_id": account_id, "event_number": number}

    @app.get("/accounts/{account_id}")
    async def get_account(account_id: str) -> dict[str, object]:
        found = await balances.get(account_id)
        if found is None:
            raise HTTPException(404, f"no account {account_id!r} (yet)")
        return {"account_id": account_id, **found}

    return app


def subscribe(store: Store, balances: Balances) -> None:
    """The workers' subscriber: an `async def` handler, awaited by the bus."""
    store.subscribe(ACCOUNT, "balances", balances.apply)


# -- Wiring from the ES_ settings: the workers' Store and the web app on one Redis ----------

settings = load_settings()
store = Store.from_settings(events=EVENTS, settings=settings)
# One asyncio client per process side: the workers' is used on Dramatiq's event loop only,
# the web app's on the ASGI server's.
subscribe(store, Balances(async_redis_client(settings), settings.prefix))
app = create_app(
    AsyncStore.from_settings(events=EVENTS, settings=settings, bus=store.bus),
    Balances(async_redis_client(settings), settings.prefix),
)
