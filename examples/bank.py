"""A bank on es_workers: accounts, deposits, withdrawals and transfers between accounts.

The events of an account are the truth; three subscribers react to them:

- `balances` keeps a read model, one Redis hash per account (owner, balance);
- `activity` counts events by name, in one Redis hash;
- `transfers` finishes a transfer: when money leaves an account (`TransferSent`), it
  credits the other account (`TransferReceived`), once per transfer ID.

Handlers run at least once, so each one is idempotent: a read model stores the number of
the last event it applied and ignores an event at or below it; `transfers` checks the
target account has not received that transfer ID yet. The read models declare a reset hook
that deletes them, so `es-workers rebuild examples.bank:store balances` can build one again
from the events while the app runs.

Run it with a Redis at ES_REDIS_URL (from the directory holding `examples/`):

    es-workers publish examples.bank:store     # relays new events to the subscribers
    es-workers worker examples.bank:store      # runs the subscribers
    python -c "from examples import bank; bank.open_account('a1', 'Ada'); bank.deposit('a1', 50)"

or all of it on an embedded Redis with `es-workers demo`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis
from pydantic import PositiveInt

from es_workers import ConcurrencyError, Content, Event, Store
from es_workers.settings import load_settings
from es_workers.wiring import redis_client

ACCOUNT = "account"


# -- Events ------------------------------------------------------------------------------

class Opened(Content):
    owner: str


class Deposited(Content):
    amount: PositiveInt


class Withdrawn(Content):
    amount: PositiveInt


class TransferSent(Content):
    transfer_id: str
    to_account: str
    amount: PositiveInt


class TransferReceived(Content):
    transfer_id: str
    from_account: str
    amount: PositiveInt


settings = load_settings()
store = Store.from_settings(
    events={ACCOUNT: [Opened, Deposited, Withdrawn, TransferSent, TransferReceived]},
    settings=settings,
)
# The read models live in the same Redis as the events, under the store's prefix. They
# share one hash tag, so a transaction over several of them stays in one Redis Cluster slot.
read_models: redis.Redis = redis_client(settings)  # type: ignore[assignment]
KEYS = f"{settings.prefix}:{{bank}}"


# -- State and commands --------------------------------------------------------------------

class BankError(Exception):
    """A command was refused; nothing was written."""


@dataclass
class Account:
    """An account's state, decided from its events alone."""

    opened: bool = False
    owner: str = ""
    balance: int = 0
    received: set[str] = field(default_factory=set)

    def handle(self, event: Event) -> None:
        match event.content:
            case Opened(owner=owner):
                self.opened, self.owner = True, owner
            case Deposited(amount=amount):
                self.balance += amount
            case Withdrawn(amount=amount) | TransferSent(amount=amount):
                self.balance -= amount
            case TransferReceived(transfer_id=transfer_id, amount=amount):
                self.balance += amount
                self.received.add(transfer_id)


def account(account_id: str) -> Account:
    state = Account()
    store.project(ACCOUNT, account_id, state)
    return state


def execute(
    account_id: str, decide: Callable[[Account], Sequence[Content]], attempts: int = 20
) -> int:
    """Reads the account, decides what happens, writes it; on a concurrent write, again.
    Returns the account's position after the write."""
    for _ in range(attempts):
        with store.open(ACCOUNT, account_id) as stream:
            state = Account()
            stream.project(state)
            contents = decide(state)
            try:
                stream.write(*contents)
                return stream.position
            except ConcurrencyError:
                continue  # another command got there first: decide on the new state
    raise BankError(f"account {account_id!r} is too busy: gave up after {attempts} attempts")


def _open_first(account_id: str, state: Account) -> None:
    if not state.opened:
        raise BankError(f"account {account_id!r} is not open")


def open_account(account_id: str, owner: str) -> None:
    def decide(state: Account) -> list[Content]:
        if state.opened:
            raise BankError(f"account {account_id!r} is already open")
        return [Opened(owner=owner)]

    execute(account_id, decide)


def deposit(account_id: str, amount: int) -> None:
    def decide(state: Account) -> list[Content]:
        _open_first(account_id, state)
        return [Deposited(amount=amount)]

    execute(account_id, decide)


def withdraw(account_id: str, amount: int) -> None:
    def decide(state: Account) -> list[Content]:
        _open_first(account_id, state)
        if state.balance < amount:
            raise BankError(f"account {account_id!r} holds {state.balance}, not {amount}")
        return [Withdrawn(amount=amount)]

    execute(account_id, decide)


def transfer(
    from_account: str, to_account: str, amount: int, *, wait_s: float | None = 10.0
) -> str:
    """Takes the money from one account now; the `transfers` subscriber credits the other
    one. With `wait_s` (the default), returns only once it has (read-your-writes: a
    withdrawal right after sees the credit); `None` returns at once."""
    if from_account == to_account:
        raise BankError("a transfer needs two accounts")
    if not account(to_account).opened:
        raise BankError(f"account {to_account!r} is not open")
    transfer_id = uuid.uuid4().hex

    def decide(state: Account) -> list[Content]:
        _open_first(from_account, state)
        if state.balance < amount:
            raise BankError(f"account {from_account!r} holds {state.balance}, not {amount}")
        return [TransferSent(transfer_id=transfer_id, to_account=to_account, amount=amount)]

    position = execute(from_account, decide)
    if wait_s is not None:
        store.wait_for(ACCOUNT, from_account, position, subscriber_ids=["transfers"],
                       timeout=wait_s)
    return transfer_id


# -- Subscribers -------------------------------------------------------------------------

def apply_once(
    guard: str, event: Event, update: Callable[[redis.client.Pipeline], object]
) -> None:
    """Runs `update` in a Redis transaction unless the event was applied already.

    The hash `guard` holds the number of the last event applied; WATCH makes the check
    and the update one step even if a slow, lock-expired worker races a newer one.
    """

    def attempt(pipe: redis.client.Pipeline) -> None:
        applied = int(pipe.hget(guard, "event_number") or 0)
        if event.event_number <= applied:
            return  # a repeated delivery
        pipe.multi()
        update(pipe)
        pipe.hset(guard, "event_number", event.event_number)

    read_models.transaction(attempt, guard)


def clear_balances() -> None:
    """Deletes the `balances` read model: `es-workers rebuild examples.bank:store balances`
    calls it once no handler of `balances` runs, then hands `balances` the whole history."""
    read_models.delete(f"{KEYS}:accounts", *read_models.scan_iter(f"{KEYS}:balance:*"))


def clear_activity() -> None:
    """Deletes the `activity` read model (counts, and the last event applied per account)."""
    read_models.delete(f"{KEYS}:activity", *read_models.scan_iter(f"{KEYS}:activity:*"))


@store.subscribe(ACCOUNT, "balances", reset=clear_balances)
def update_balance(event: Event) -> None:
    key = f"{KEYS}:balance:{event.entity_id}"

    def update(pipe: redis.client.Pipeline) -> None:
        match event.content:
            case Opened(owner=owner):
                pipe.hset(key, "owner", owner)
                pipe.hsetnx(key, "balance", 0)
                pipe.sadd(f"{KEYS}:accounts", event.entity_id)
            case Deposited(amount=amount) | TransferReceived(amount=amount):
                pipe.hincrby(key, "balance", amount)
            case Withdrawn(amount=amount) | TransferSent(amount=amount):
                pipe.hincrby(key, "balance", -amount)

    apply_once(key, event, update)


@store.subscribe(ACCOUNT, "activity", reset=clear_activity)
def count_activity(event: Event) -> None:
    apply_once(
        f"{KEYS}:activity:{event.entity_id}",
        event,
        lambda pipe: pipe.hincrby(f"{KEYS}:activity", event.content.event_name, 1),
    )


@store.subscribe(ACCOUNT, "transfers")
def credit_transfer(event: Event) -> None:
    sent = event.content
    if not isinstance(sent, TransferSent):
        return

    def decide(state: Account) -> list[Content]:
        if sent.transfer_id in state.received:
            return []  # credited on an earlier delivery of this event
        return [TransferReceived(
            transfer_id=sent.transfer_id, from_account=event.entity_id, amount=sent.amount
        )]

    execute(sent.to_account, decide)


# -- Reading the read models ---------------------------------------------------------------

def balances() -> dict[str, int]:
    """Account ID -> balance, as the `balances` read model has it so far."""
    ids = sorted(x.decode() for x in read_models.smembers(f"{KEYS}:accounts"))  # type: ignore[union-attr]
    pipe = read_models.pipeline(transaction=False)
    for account_id in ids:
        pipe.hget(f"{KEYS}:balance:{account_id}", "balance")
    return {a: int(b or 0) for a, b in zip(ids, pipe.execute(), strict=True)}


def activity() -> dict[str, int]:
    """Event name -> events handled, as the `activity` read model has it so far."""
    counts = read_models.hgetall(f"{KEYS}:activity")
    return {k.decode(): int(v) for k, v in counts.items()}  # type: ignore[union-attr]
