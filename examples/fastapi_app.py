"""A FastAPI app on es_workers: accounts written from async endpoints, and an `async def`
subscriber keeping their balances.

- `POST /accounts/{account_id}/deposits` `{"amount": 5}` appends a `Deposited` event (an
  `Opened` first for a new account) through an `AsyncStore`, without blocking the event
  loop, and answers the account's new event number.
- `GET /accounts/{account_id}` answers the `balances` read model: the balance and the
  number of the last event it applied.
- `balances` is an `async def` handler of the workers' `Store`: `es-workers worker` runs
  it on Dramatiq's event loop. It writes the read model to Redis with an asyncio client,
  the update and its guard in one script (`APPLY`).
- An account ID breaking the entity-ID rule (or holding a "/") is answered 422 naming it;
  `/openapi.json` documents every answer (200, 400, 404, 409, 422, 504) and the rule.

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
from typing import Annotated

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, PositiveInt, field_validator
from redis.asyncio import Redis

from es_workers import (
    AsyncStore,
    ConcurrencyError,
    Content,
    Event,
    ParkedError,
    Store,
    WaitTimeoutError,
)
from es_workers.settings import load_settings
from es_workers.wiring import async_redis_client

ACCOUNT = "account"


class Opened(Content):
    owner: str


class Deposited(Content):
    amount: PositiveInt


EVENTS: dict[str, list[type[Content]]] = {ACCOUNT: [Opened, Deposited]}


# The update and its guard in one step. A MULTI would not do: Redis does not roll one back
# when a command in it fails, so the guard moved on without the balance and the handler's
# retry skipped the deposit. A script stops at its first error; it checks before it writes.
APPLY = """
-- KEYS[1] the account's balance hash
-- ARGV[1] the event number, ARGV[2] the amount to add
-- Returns 1 if applied, 0 if the event was applied before (a repeated delivery).
local applied = tonumber(redis.call('HGET', KEYS[1], 'event_number') or '0')
if tonumber(ARGV[1]) <= applied then
  return 0
end
local balance = redis.call('HGET', KEYS[1], 'balance')
if balance and not tonumber(balance) then
  return redis.error_reply('balance of ' .. KEYS[1] .. ' is not a number: ' .. balance)
end
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[2])
redis.call('HSET', KEYS[1], 'event_number', ARGV[1])
return 1
"""


class Balances:
    """The read model: a Redis hash per account, `balance` and `event_number` (the last
    event applied). Handlers run at least once, so an event at or below it is ignored."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._apply = client.register_script(APPLY)

    def key(self, account_id: str) -> str:
        return f"{self.prefix}:fastapi:balance:{account_id}"

    async def apply(self, event: Event) -> None:
        amount = event.content.amount if isinstance(event.content, Deposited) else 0
        await self._apply(keys=[self.key(event.entity_id)], args=[event.event_number, amount])

    async def get(self, account_id: str) -> dict[str, int] | None:
        found = await self.client.hgetall(self.key(account_id))
        if not found:
            return None
        return {"balance": int(found[b"balance"]), "event_number": int(found[b"event_number"])}


# An account ID is an entity ID (1 to 200 characters, no control characters) that fits in
# one segment of the URL path (no "/").
ACCOUNT_ID_PATTERN = r"^[^/\x00-\x1f\x7f-\x9f]+$"
AccountId = Annotated[str, PathParam(
    min_length=1, max_length=200, pattern=ACCOUNT_ID_PATTERN,
    description="1 to 200 characters, without '/' or control characters",
)]
MAX_DEPOSIT = 1_000_000_000  # keeps any balance far inside Redis' 64-bit integers


class DepositRequest(BaseModel):
    amount: int = Field(gt=0, le=MAX_DEPOSIT)

    @field_validator("amount", mode="before")
    @classmethod
    def json_integer(cls, value: object) -> object:
        """JSON Schema's integer, as the OpenAPI schema says: a number without a fraction
        (5 or 5.0), never `true` or `"5"`, which lax pydantic would take as 1 and 5."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a JSON integer")
        return value


class DepositWritten(BaseModel):
    account_id: str
    event_number: int = Field(description="the account's event number after the deposit")


class Account(BaseModel):
    account_id: str
    balance: int
    event_number: int = Field(description="the last event the read model applied")


class Problem(BaseModel):
    detail: str


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

    @app.post("/accounts/{account_id}/deposits", responses={
        400: {"model": Problem, "description": "The body is not JSON"},
        409: {"model": Problem, "description": "Too many concurrent writes to the account"},
        504: {"model": Problem, "description": "`?wait=true`: the deposit was written, but "
              "`balances` did not handle it in time (or parked the account)"},
    })
    async def post_deposit(
        account_id: AccountId, request: DepositRequest, wait: bool = False
    ) -> DepositWritten:
        """`?wait=true`: answer once `balances` has handled the deposit (read-your-writes:
        a GET right after sees it)."""
        number = await deposit(store, account_id, request.amount)
        if wait:
            try:
                await store.wait_for("account", account_id, number,
                                     subscriber_ids=["balances"])
            except (WaitTimeoutError, ParkedError) as error:
                raise HTTPException(504, f"written as event {number}; {error}") from error
        return DepositWritten(account_id=account_id, event_number=number)

    @app.get("/accounts/{account_id}", responses={
        404: {"model": Problem, "description": "No deposit of the account handled yet"},
    })
    async def get_account(account_id: AccountId) -> Account:
        found = await balances.get(account_id)
        if found is None:
            raise HTTPException(404, f"no account {account_id!r} (yet)")
        return Account(account_id=account_id, **found)

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
