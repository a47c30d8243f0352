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
from typing import Any

import fakeredis
import pytest
from apps.delivery_kit import FAST_PUBLISHER, Delivery, stub_broker
from conftest import REDIS_URL, delete_prefix, real_redis
from kit import ROOT, Processes, wait_for, write_at_head
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from trace_events import ORDER_EVENTS, InvoiceIssued, OrderPlaced

import es_workers
from es_workers import Event, InMemoryStorage, RedisStorage, Store
from es_workers.tracing import CONVENTIONS
from es_workers.workers.delivery import DeliveryOptions

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing() -> Iterator[None]:
    """The SDK, as an app would set it up (once per process: OpenTelemetry allows one).
    Taken down after the module, as OpenTelemetry's own test utilities reset its globals,
    so that the tests after these write no trace context (it changes metadata sizes)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    yield
    provider.shutdown()
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    es_workers.tracing._provider_set = False
    assert not es_workers.tracing.enabled()


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
        ["POST /orders", "send order", "process order", "send invoice", "process invoice"]
    )
    (order_append,) = by_name(finished, "send order")
    (handle,) = by_name(finished, "process order")
    assert order_append.kind is SpanKind.PRODUCER and handle.kind is SpanKind.CONSUMER
    assert order_append.parent.span_id == request.get_span_context().span_id
    assert handle.parent.span_id == order_append.context.span_id
    (order,) = store.open("order", "o1").all()
    assert dict(order_append.attributes) == {
        "messaging.system": "es_workers", "messaging.operation.type": "send",
        "messaging.operation.name": "send", "messaging.destination.name": "order",
        "messaging.message.id": order.store_event_id,
        "es.entity_type": "order", "es.entity_id": "o1", "es.first_event_number": 1,
        "es.last_event_number": 1, "es.event_count": 1,
    }
    assert dict(handle.attributes) == {
        "messaging.system": "es_workers", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": "order",
        "messaging.consumer.group.name": "invoicer",
        "messaging.message.id": order.store_event_id,
        "es.subscriber_id": "invoicer", "es.entity_type": "order", "es.entity_id": "o1",
        "es.event_number": 1, "es.attempt": 1,
    }
    # The conventions: a process span links to the message's creation context.
    assert [link.context.span_id for link in handle.links] == [order_append.context.span_id]
    assert order.metadata["traceparent"].split("-")[1] == f"{trace_id:032x}"
    for span in (order_append, handle):
        assert span.instrumentation_scope.name == "es_workers"
        assert span.instrumentation_scope.version == es_workers.__version__ != "0+unknown"
        assert span.instrumentation_scope.schema_url == (
            f"https://opentelemetry.io/schemas/{CONVENTIONS}")


def test_a_write_of_several_events_is_one_send_span_counting_them(
    spans: InMemorySpanExporter,
) -> None:
    store = Store(InMemoryStorage(), events=ORDER_EVENTS)
    store.open("order", "o1").write(OrderPlaced(amount=1), OrderPlaced(amount=2))
    (send,) = by_name(spans.get_finished_spans(), "send order")
    assert send.attributes["messaging.batch.message_count"] == 2
    assert "messaging.message.id" not in send.attributes  # one message only


def test_a_write_outside_any_span_is_linked_from_its_handlers_not_their_parent(
    spans: InMemorySpanExporter,
) -> None:
    store = Store(InMemoryStorage(), events=ORDER_EVENTS)
    handled: list[Event] = []
    store.subscribe("order", "audit", handled.append)
    thread = threading.Thread(target=store.start, daemon=True)
    thread.start()
    try:
        store.open("order", "o1").write(OrderPlaced(amount=5))  # no active span
        wait_for(lambda: handled, "the order handled")
    finally:
        store.close()
        thread.join(timeout=10)
    finished = spans.get_finished_spans()
    (send,) = by_name(finished, "send order")
    (process,) = by_name(finished, "process order")
    assert send.parent is None and process.parent is None
    assert process.context.trace_id != send.context.trace_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert [link.context.trace_id for link in process.links] == [send.context.trace_id]
    (order,) = store.open("order", "o1").all()
    assert "traceparent" not in order.metadata
    assert order.metadata["tracelink"].split("-")[2] == f"{send.context.span_id:016x}"


def test_failed_attempts_and_the_parking_are_on_the_process_spans(
    spans: InMemorySpanExporter,
) -> None:
    storage = RedisStorage(fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0))),
                           prefix="tr", publisher=FAST_PUBLISHER)
    delivery = Delivery(storage, stub_broker(), events=ORDER_EVENTS,
                        options=DeliveryOptions(max_attempts=2, min_backoff_ms=10))

    def failing(event: Event) -> None:
        raise RuntimeError(f"cannot handle {event.entity_id}")

    delivery.store.subscribe("order", "fragile", failing)
    delivery.start_publisher()
    delivery.start_worker()
    try:
        with trace.get_tracer("test").start_as_current_span("POST /orders"):
            delivery.store.open("order", "o1").write(OrderPlaced(amount=5))
        wait_for(lambda: len(by_name(spans.get_finished_spans(), "process order")) >= 2,
                 "two attempts")
        wait_for(lambda: by_name(spans.get_finished_spans(), "relay order"), "the relay span")
    finally:
        delivery.stop()
    finished = spans.get_finished_spans()
    attempts = by_name(finished, "process order")
    assert [span.attributes["es.attempt"] for span in attempts] == [1, 2]
    for span in attempts:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "RuntimeError"
        assert span.events[0].name == "exception"
        assert span.attributes["messaging.consumer.group.name"] == "fragile"
    assert [e.name for e in attempts[0].events] == ["exception"]
    assert [(e.name, dict(e.attributes)) for e in attempts[1].events][1:] == [
        ("es.parked", {"es.attempts": 2})]
    (relay,) = by_name(finished, "relay order")
    assert relay.kind is SpanKind.CLIENT
    assert dict(relay.attributes) == {
        "messaging.system": "es_workers", "messaging.operation.type": "send",
        "messaging.operation.name": "relay", "messaging.destination.name": "order",
        "messaging.batch.message_count": 1,
    }


def test_without_a_tracer_provider_a_write_stores_no_trace_context() -> None:
    code = """
from es_workers import Content, InMemoryStorage, Store
from es_workers import tracing

class Placed(Content):
    amount: int

store = Store(InMemoryStorage(), events={"order": [Placed]})
store.open("order", "o1").write(Placed(amount=1))
(event,) = store.open("order", "o1").all()
assert dict(event.metadata) == {}, event.metadata
assert not tracing.enabled()
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


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

        wait_for(lambda: any(s["name"] == "process order" for s in worker_spans()),
                 "the worker's process span", timeout=30)
        trace_id = f"{request.get_span_context().trace_id:032x}"
        handle = next(s for s in worker_spans() if s["name"] == "process order")
        invoice_append = next(s for s in worker_spans() if s["name"] == "send invoice")
        order_append = next(s for s in spans.get_finished_spans() if s.name == "send order")
        assert handle["trace_id"] == invoice_append["trace_id"] == trace_id
        assert handle["parent_id"] == f"{order_append.context.span_id:016x}"
        assert invoice_append["parent_id"] == handle["span_id"]

        (order,) = store.open("order", "o1").all()
        (invoice,) = store.open("invoice", "inv-o1").all()
        assert invoice.causation_id == order.store_event_id
        assert invoice.correlation_id == order.store_event_id

        wait_for(lambda: any(s["name"] == "relay order" for s in worker_spans()),
                 "the publisher's relay span", timeout=30)
        real = [*worker_spans(), *({"name": s.name, "kind": str(s.kind),
                                    "attributes": dict(s.attributes or {})}
                                   for s in spans.get_finished_spans())]
        for shown in readme_trace():
            assert_shown_as_made(shown, [s for s in real if s["name"] == shown["name"]])
    finally:
        processes.stop_all()
        delete_prefix(client, prefix)
        client.close()


def readme_trace() -> list[dict[str, Any]]:
    """The spans of the README's trace (its `# web` block, comment lines left out)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```text\n# web\n", 1)[1].split("```", 1)[0]
    text = "\n".join(line for line in block.splitlines() if not line.startswith("#"))
    found, decoder, at = [], json.JSONDecoder(), 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        span, at = decoder.raw_decode(text, at)
        found.append(span)
    return found


# What differs from run to run, or names what the README's example names otherwise.
VARYING = {"messaging.message.id", "es.entity_id"}


def assert_shown_as_made(shown: dict[str, Any], made: list[dict[str, Any]]) -> None:
    """A span of the README's trace has a span of a real run: same name, kind, attribute
    names and (but for IDs) values."""
    assert made, f"the README shows a span {shown['name']!r} that no process made"
    attributes = shown.get("attributes", {})
    fits = [
        s for s in made
        if s["kind"] == shown["kind"] and set(s["attributes"]) == set(attributes)
        and all(s["attributes"][k] == v for k, v in attributes.items() if k not in VARYING)
    ]
    assert fits, f"README's {shown['name']!r}: {shown} differs from the real {made}"


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
