"""The events of the tracing tests: orders, and the invoices a subscriber writes for them.
Apart from tests/trace_app.py, whose import builds a Store from the settings (the test
process imports only these)."""

from __future__ import annotations

from es_workers import Content


class OrderPlaced(Content):
    amount: int


class InvoiceIssued(Content):
    order_id: str


ORDER_EVENTS: dict[str, list[type[Content]]] = {"order": [OrderPlaced], "invoice": [InvoiceIssued]}
