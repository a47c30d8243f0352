"""OpenTelemetry spans, when `opentelemetry-api` is installed (`pip install
'es_workers[otel]'`; the application brings the SDK). Without it these are no-ops.

- `append_span`: a write runs in a span `es.append`; when the write belongs to a trace (a
  span was active), that span's W3C `traceparent` is stored in the events' metadata.
- `handle_span`: each handler call runs in a span `es.handle` whose parent is the context
  stored with the event, so one trace runs from the web request through the publisher and
  worker processes to the handler, and on into the events it writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from .event import Event
from .metadata import handling

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject
    _NO_PROVIDERS: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
except ImportError:  # the otel extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
_TRACER_NAME = "es_workers"
_provider_set = False


def enabled() -> bool:
    """Whether spans are recorded: the API is installed and the app set a tracer provider
    (an SDK). Without one, spans would be no-ops anyway: skipping them keeps an append
    ~3 us cheaper. OpenTelemetry sets the provider once per process: once found, it stays."""
    global _provider_set
    if not _provider_set and trace is not None:
        _provider_set = not isinstance(trace.get_tracer_provider(), _NO_PROVIDERS)
    return _provider_set


_NO_TRACE: dict[str, str] = {}


def append_span(
    entity_type: str, entity_id: str, first: int, last: int
) -> AbstractContextManager[dict[str, str]]:
    """Runs a write in a span `es.append`; gives the metadata to store with the events: the
    `traceparent` of that span when the write belongs to a trace (a span was active), else
    nothing (a root write stores nothing extra)."""
    if not enabled():
        return nullcontext(_NO_TRACE)
    return _append_span(entity_type, entity_id, first, last)


@contextmanager
def _append_span(entity_type: str, entity_id: str, first: int, last: int
                 ) -> Iterator[dict[str, str]]:
    traced = trace.get_current_span().get_span_context().is_valid
    with trace.get_tracer(_TRACER_NAME).start_as_current_span(
        "es.append",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "es.entity_type": entity_type,
            "es.entity_id": entity_id,
            "es.first_event_number": first,
            "es.last_event_number": last,
            "es.event_count": last - first + 1,
        },
    ):
        yield _traceparent() if traced else _NO_TRACE


def _traceparent() -> dict[str, str]:
    carrier: dict[str, str] = {}
    inject(carrier)
    return {TRACEPARENT: carrier[TRACEPARENT]} if TRACEPARENT in carrier else {}


@contextmanager
def handle_span(subscriber_id: str, event: Event) -> Iterator[None]:
    if not enabled():
        yield
        return
    parent = _stored_context(event.metadata)
    token = otel_context.attach(parent) if parent is not None else None
    try:
        with trace.get_tracer(_TRACER_NAME).start_as_current_span(
            "es.handle",
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "es.subscriber_id": subscriber_id,
                "es.entity_type": event.entity_type,
                "es.entity_id": event.entity_id,
                "es.event_number": event.event_number,
            },
        ):
            yield
    finally:
        if token is not None:
            otel_context.detach(token)


def _stored_context(metadata: Mapping[str, str]) -> Any:
    if TRACEPARENT not in metadata:
        return None
    return extract({TRACEPARENT: metadata[TRACEPARENT]})


def handler_call(subscriber_id: str, event: Event) -> AbstractContextManager[None]:
    """Around each handler call, on every bus: the event is the cause of what the handler
    writes, and the call is traced as a child of the write that stored the event."""
    if not enabled():
        return handling(event)
    return _traced_handler_call(subscriber_id, event)


@contextmanager
def _traced_handler_call(subscriber_id: str, event: Event) -> Iterator[None]:
    with handling(event), handle_span(subscriber_id, event):
        yield
