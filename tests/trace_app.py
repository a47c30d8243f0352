"""An app for the cross-process tracing test, run by real `es-workers publish` / `worker`
processes: orders, and a subscriber that writes an invoice per order.

With ES_TEST_SPANS set, its processes export every finished span as one JSON line to that
file (the OpenTelemetry SDK stands in for an app's own tracing setup).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from es_workers import Event, Store
from tests.trace_events import ORDER_EVENTS, InvoiceIssued


def export_spans_to(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class LineExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a") as out:
                for span in spans:
                    context, parent = span.get_span_context(), span.parent
                    out.write(json.dumps({
                        "name": span.name,
                        "kind": str(span.kind),
                        "trace_id": f"{context.trace_id:032x}" if context else "",
                        "span_id": f"{context.span_id:016x}" if context else "",
                        "parent_id": f"{parent.span_id:016x}" if parent else None,
                        "attributes": dict(span.attributes or {}),
                    }) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LineExporter()))
    trace.set_tracer_provider(provider)


if os.environ.get("ES_TEST_SPANS"):
    export_spans_to(os.environ["ES_TEST_SPANS"])

store = Store.from_settings(events=ORDER_EVENTS)


@store.subscribe("order", "invoicer")
def issue(event: Event) -> None:
    with store.open("invoice", f"inv-{event.entity_id}") as stream:
        if not list(stream.all()):  # idempotent: at least once
            stream.write(InvoiceIssued(order_id=event.entity_id))
