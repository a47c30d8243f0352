"""OpenTelemetry spans, when `opentelemetry-api` is installed (`pip install
'es_workers[otel]'`; the application brings the SDK). Without it these are no-ops.

The spans follow the OpenTelemetry messaging semantic conventions v1.27.0 (`SCHEMA_URL`),
`messaging.system` "es_workers", an entity type being the destination:

- `append_span`: a write runs in a PRODUCER span `send {entity_type}` (operation type
  `send`); its W3C context is stored in the events' metadata: as `traceparent` when the
  write belongs to a trace (a span was active), else as `tracelink`.
- `handler_call`: each handler call runs in a CONSUMER span `process {entity_type}`
  (operation type `process`, the subscriber as consumer group, an attempt number) that
  links to the context stored with the event, and is its child when that is a
  `traceparent`: one trace runs from the web request through the publisher and worker
  processes to the handler, and on into the events it writes. A write outside any trace
  starts none for its handlers: each handling is a trace of its own, linked to the write.
- `relay_span`: each batch the publisher relays runs in a CLIENT span `relay` (operation
  type `send`, `messaging.batch.message_count` outbox entries).

The instrumentation scope is `es_workers` at the package's version.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .event import Event
from .metadata import handling

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject
    from opentelemetry.trace import Link, Status, StatusCode
    _NO_PROVIDERS: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
except ImportError:  # the otel extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
TRACELINK = "tracelink"  # the context of a write outside any trace: linked, not a parent
SYSTEM = "es_workers"
CONVENTIONS = "1.27.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{CONVENTIONS}"
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


@cache
def package_version() -> str:
    try:
        return version("es_workers")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _tracer() -> Any:
    return trace.get_tracer(_TRACER_NAME, package_version(), schema_url=SCHEMA_URL)


class Appending:
    """A write's span: `metadata` to store with its events, `sent(events)` once they are
    made (their IDs)."""

    def __init__(self, metadata: Mapping[str, str], span: Any = None) -> None:
        self.metadata = metadata
        self._span = span

    def sent(self, events: Sequence[Event]) -> None:
        if self._span is not None and len(events) == 1:
            self._span.set_attribute("messaging.message.id", events[0].store_event_id)


_NOT_TRACED = Appending({})


def append_span(
    entity_type: str, entity_id: str, first: int, last: int
) -> AbstractContextManager[Appending]:
    """Runs a write in a span `send {entity_type}` (see the module's doc)."""
    if not enabled():
        return nullcontext(_NOT_TRACED)
    return _append_span(entity_type, entity_id, first, last)


@contextmanager
def _append_span(entity_type: str, entity_id: str, first: int, last: int
                 ) -> Iterator[Appending]:
    traced = trace.get_current_span().get_span_context().is_valid
    count = last - first + 1
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": entity_type,
        "es.entity_type": entity_type,
        "es.entity_id": entity_id,
        "es.first_event_number": first,
        "es.last_event_number": last,
        "es.event_count": count,
    }
    if count > 1:  # one event: its ID instead (`Appending.sent`)
        attributes["messaging.batch.message_count"] = count
    with _tracer().start_as_current_span(
        f"send {entity_type}", kind=trace.SpanKind.PRODUCER, attributes=attributes,
    ) as span:
        yield Appending(_context(TRACEPARENT if traced else TRACELINK), span)


def _context(key: str) -> dict[str, str]:
    """The current span's W3C context, under `key`."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return {key: carrier[TRACEPARENT]} if TRACEPARENT in carrier else {}


class Handling:
    """A handler call's span: marks a failed attempt and a parked entity on it."""

    def __init__(self, span: Any = None) -> None:
        self._span = span
        self._failed = False

    def failed(self, error: BaseException) -> None:
        """The attempt failed with `error`: the span's status, `error.type`, the exception."""
        self._failed = True
        if self._span is None:
            return
        self._span.set_attribute("error.type", _qualified_name(type(error)))
        self._span.record_exception(error)
        self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def parked(self, attempts: int) -> None:
        """The failure parked the entity for this subscriber: a span event `es.parked`."""
        if self._span is not None:
            self._span.add_event("es.parked", {"es.attempts": attempts})


_NOT_HANDLED = Handling()


def _qualified_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


def handler_call(subscriber_id: str, event: Event, attempt: int = 1
                 ) -> AbstractContextManager[Handling]:
    """Around each handler call, on every bus: the event is the cause of what the handler
    writes, and the call is traced in a span `process {entity_type}` (see the module's doc).
    `attempt`: 1, then 2... as a failing event is tried again."""
    if not enabled():
        return _untraced_handler_call(event)
    return _traced_handler_call(subscriber_id, event, attempt)


@contextmanager
def _untraced_handler_call(event: Event) -> Iterator[Handling]:
    with handling(event):
        yield _NOT_HANDLED


@contextmanager
def _traced_handler_call(subscriber_id: str, event: Event, attempt: int) -> Iterator[Handling]:
    metadata = event.metadata
    parent = _extract(metadata.get(TRACEPARENT))
    linked = parent if parent is not None else _extract(metadata.get(TRACELINK))
    links = []
    if linked is not None:
        span_context = trace.get_current_span(linked).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    # Not the handler's own thread's context: a root span unless the write was traced.
    token = otel_context.attach(parent if parent is not None else otel_context.Context())
    try:
        with handling(event), _tracer().start_as_current_span(
            f"process {event.entity_type}",
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": event.entity_type,
                "messaging.consumer.group.name": subscriber_id,
                "messaging.message.id": event.store_event_id,
                "es.subscriber_id": subscriber_id,
                "es.entity_type": event.entity_type,
                "es.entity_id": event.entity_id,
                "es.event_number": event.event_number,
                "es.attempt": attempt,
            },
            record_exception=False, set_status_on_exception=False,
        ) as span:
            handled = Handling(span)
            try:
                yield handled
            except BaseException as error:
                if not handled._failed:
                    handled.failed(error)
                raise
    finally:
        otel_context.detach(token)


def _extract(traceparent: str | None) -> Any:
    if traceparent is None:
        return None
    return extract({TRACEPARENT: traceparent})


class Relaying:
    """A relay's span: `entity_types(...)` names its destination when they are one."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def entity_types(self, entity_types: set[str]) -> None:
        if self._span is not None and len(entity_types) == 1:
            (entity_type,) = entity_types
            self._span.set_attribute("messaging.destination.name", entity_type)
            self._span.update_name(f"relay {entity_type}")


_NOT_RELAYING = Relaying()


def relay_span(count: int) -> AbstractContextManager[Relaying]:
    """Runs the relay of `count` outbox entries in a span `relay` (`relay {entity_type}`
    when they are of one type)."""
    if not enabled():
        return nullcontext(_NOT_RELAYING)
    return _relay_span(count)


@contextmanager
def _relay_span(count: int) -> Iterator[Relaying]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "relay",
        "messaging.batch.message_count": count,
    }
    # Its context is stored nowhere (the writer's is): CLIENT, as the conventions say.
    with _tracer().start_as_current_span("relay", kind=trace.SpanKind.CLIENT,
                                         attributes=attributes) as span:
        yield Relaying(span)
