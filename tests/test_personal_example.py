"""examples/customers.py: a read model copies personal data and drops it when the
customer is forgotten; the events still read, with placeholders."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from types import ModuleType

import pytest
from kit import wait_for

from es_workers.encryption import new_master_key
from es_workers.personal import FORGOTTEN_TEXT


@pytest.fixture
def customers(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    for name in list(os.environ):
        if name.startswith("ES_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ES_ENCRYPTION_KEY", new_master_key())
    monkeypatch.setenv("ES_PREFIX", f"t-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("ES_BROKER_URL", "stub://")
    sys.modules.pop("examples.customers", None)
    module = importlib.import_module("examples.customers")
    yield module
    module.store.close()
    sys.modules.pop("examples.customers", None)


def test_a_forgotten_customer_leaves_the_read_model_and_reads_as_placeholders(
    customers: ModuleType,
) -> None:
    import dramatiq

    store = customers.store
    worker = dramatiq.Worker(store.bus.broker, worker_timeout=10, worker_threads=2)
    publishing = threading.Thread(target=store.start, daemon=True)
    worker.start()
    publishing.start()
    try:
        customers.register("c1", "Ada Lovelace", "ada@example.org")
        customers.place_order("o1", "c1", "12 St James's Square", 4200)
        wait_for(lambda: "c1" in customers.directory, "the directory to copy c1")
        store.forget("c1")
        wait_for(lambda: "c1" not in customers.directory, "the copy of c1 to be dropped")
    finally:
        store.close()
        publishing.join(10)
        worker.stop()
    [order] = store.open("order", "o1").all()
    assert order.forgotten and order.content.shipping_address == FORGOTTEN_TEXT
    assert order.content.total_cents == 4200
