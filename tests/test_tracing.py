"""OpenTelemetry: one trace from the request that writes, through the publisher and the
worker processes, to the handler and on into the events it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REDIS_URL, delete_prefix, real_redis
from kit import ROOT, Processes, wait_for, write_at_head
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trace_events import ORDER_EVENTS, InvoiceIssued, OrderPlaced

from es_workers import Event, InMemoryStorage, RedisStorage, Store

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    """The SDK, as an app would set it up (once per process: OpenTelemetry allows one)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def test_one_trace_from_request_to_handler_and_its_writes_in_one_process(
    spans: InMemorySpanExporter,
) -> None:
    store = Store(InMemoryStorage(), events=ORDER_EVENTS)
    ledger: list[Event] = []

    @store.subscribe("order", "invoicer")
    def issue(event: Event) -> None:
        write_at_head(store, "invoice", f"inv-{event.entity_id}",
                      InvoiceIssued(order_id=event.entity_id))

    store.subscribe("invoice", "ledger", ledger.append)
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        with trace.get_tracer("test").start_as_current_span("POST /orders") as request:
            store.open("order", "o1").write(OrderPlaced(amount=5))
        wait_for(lambda: ledger, "the invoice to reach the ledger")
    finally:
        store.close()
        thread.join(timeout=10)

    finished = spans.get_finished_spans()
    trace_id = request.get_span_context().trace_id
    names = [span.name for span in finished if span.context.trace_id == trace_id]
    assert sorted(names) == sorted(
        ["POST /orders", "es.append", "es.handle", "es.append", "es.handle"]
    )
    order_append = next(s for s in by_name(finished, "es.append")
                        if s.attributes["es.entity_type"] == "order")
    handle = next(s for s in by_name(finished, "es.handle")
                  if s.attributes["es.subscriber_id"] == "invoicer")
    assert order_append.parent.span_id == request.get_span_context().span_id
    assert handle.parent.span_id == order_append.context.span_id
    assert dict(order_append.attributes) == {
        "es.entity_type": "order", "es.entity_id": "o1", "es.first_event_number": 1,
        "es.last_event_number": 1, "es.event_count": 1,
    }
    assert dict(handle.attributes) == {
        "es.subscriber_id": "invoicer", "es.entity_type": "order", "es.entity_id": "o1",
        "es.event_number": 1,
    }
    (order,) = store.open("order", "o1").all()
    assert order.metadata["traceparent"].split("-")[1] == f"{trace_id:032x}"


def test_no_active_span_stores_no_trace_context(spans: InMemorySpanExporter) -> None:
    store = Store(InMemoryStorage(), events=ORDER_EVENTS)
    store.open("order", "o1").write(OrderPlaced(amount=5))
    (order,) = store.open("order", "o1").all()
    assert dict(order.metadata) == {}


@pytest.mark.process
def test_one_trace_across_publisher_and_worker_processes(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    client = real_redis()
    prefix = f"trace-{uuid.uuid4().hex[:10]}"
    span_file = tmp_path / "spans.jsonl"
    env = dict(os.environ, ES_REDIS_URL=REDIS_URL, ES_PREFIX=prefix, PYTHONPATH=str(ROOT),
               ES_TEST_SPANS=str(span_file))
    processes = Processes(env, tmp_path)
    store = Store(RedisStorage(client, prefix=prefix), events=ORDER_EVENTS)
    try:
        processes.publisher("tests.trace_app:store")
        processes.worker("tests.trace_app:store")
        with trace.get_tracer("test").start_as_current_span("POST /orders") as request:
            store.open("order", "o1").write(OrderPlaced(amount=5))
        wait_for(lambda: list(store.open("invoice", "inv-o1").all()), "the invoice", timeout=60)

        def worker_spans() -> list[dict[str, object]]:
            if not span_file.exists():
                return []
            return [json.loads(line) for line in span_file.read_text().splitlines()]

        wait_for(lambda: any(s["name"] == "es.handle" for s in worker_spans()),
                 "the worker's es.handle span", timeout=30)
        trace_id = f"{request.get_span_context().trace_id:032x}"
        handle = next(s for s in worker_spans() if s["name"] == "es.handle")
        invoice_append = next(s for s in worker_spans() if s["name"] == "es.append")
        order_append = next(s for s in spans.get_finished_spans() if s.name == "es.append")
        assert handle["trace_id"] == invoice_append["trace_id"] == trace_id
        assert handle["parent_id"] == f"{order_append.context.span_id:016x}"
        assert invoice_append["parent_id"] == handle["span_id"]

        (order,) = store.open("order", "o1").all()
        (invoice,) = store.open("invoice", "inv-o1").all()
        assert invoice.causation_id == order.store_event_id
        assert invoice.correlation_id == order.store_event_id
    finally:
        processes.stop_all()
        delete_prefix(client, prefix)
        client.close()


def test_without_opentelemetry_writes_and_handlers_work_and_nothing_is_imported() -> None:
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from es_workers import Content, InMemoryStorage, Store
from es_workers import tracing

class Placed(Content):
    amount: int

store = Store(InMemoryStorage(), events={"order": [Placed]})
store.open("order", "o1").write(Placed(amount=1), metadata={"k": "v"})
(event,) = store.open("order", "o1").all()
assert dict(event.metadata) == {"k": "v"}, event.metadata
assert not tracing.enabled()
assert [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]] == []
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
