"""Customers with personal data: `Personal` fields stored encrypted, a read model that
copies them, and a subscriber of forget notices that drops the copy.

- `Registered` and `Moved` hold the customer's name, email and address as `Personal`
  fields: they reach Redis encrypted with the customer's data key (the subject is the
  entity ID, the customer ID).
- `OrderPlaced` is an order's event: its subject is the customer it names
  (`personal_subject = "customer_id"`), so forgetting the customer forgets its shipping
  address too.
- `directory` keeps a read model (a dict here; a table in a real app) of each customer's
  name and email: a copy es_workers cannot shred. `forget_copies` subscribes to
  `es.forgotten` (`SubjectForgotten`) and deletes the copy.

Try it in one process:

    ES_ENCRYPTION_KEY=$(es-workers keys new) python -m examples.customers
"""

from __future__ import annotations

import threading
from typing import Annotated

from es_workers import Content, Event, Personal, Store, SubjectForgotten
from es_workers.forgetting import FORGOTTEN_TYPE

CUSTOMER, ORDER = "customer", "order"


class Registered(Content):
    name: Annotated[str, Personal]
    email: Annotated[str, Personal]
    newsletter: bool = False  # plain: not about the person's identity


class Moved(Content):
    address: Annotated[str, Personal]


class OrderPlaced(Content):
    personal_subject = "customer_id"
    customer_id: str
    shipping_address: Annotated[str, Personal]
    total_cents: int


store = Store.from_settings(events={CUSTOMER: [Registered, Moved], ORDER: [OrderPlaced]})
directory: dict[str, dict[str, str]] = {}  # customer ID -> name, email (the read model)
_lock = threading.Lock()


@store.subscribe(CUSTOMER, "directory")
def keep_directory(event: Event) -> None:
    if isinstance(event.content, Registered) and not event.forgotten:
        with _lock:
            directory[event.entity_id] = {"name": event.content.name,
                                          "email": event.content.email}


@store.subscribe(FORGOTTEN_TYPE, "directory-forget")
def forget_copies(event: Event) -> None:
    assert isinstance(event.content, SubjectForgotten)
    with _lock:
        directory.pop(event.content.subject, None)


def register(customer_id: str, name: str, email: str) -> None:
    with store.open(CUSTOMER, customer_id) as stream:
        stream.write(Registered(name=name, email=email))


def place_order(order_id: str, customer_id: str, address: str, total_cents: int) -> None:
    with store.open(ORDER, order_id) as stream:
        stream.write(OrderPlaced(customer_id=customer_id, shipping_address=address,
                                 total_cents=total_cents))


def main() -> None:
    register("c1", "Ada Lovelace", "ada@example.org")
    place_order("o1", "c1", "12 St James's Square, London", 4200)
    store.forget("c1")
    for entity_type, entity_id in ((CUSTOMER, "c1"), (ORDER, "o1")):
        for event in store.open(entity_type, entity_id).all():
            print(entity_type, entity_id, event.content, "forgotten:", event.forgotten)


if __name__ == "__main__":
    main()
