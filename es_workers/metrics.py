"""Prometheus metrics. Collected always (cheap); served only when a metrics port is set.

Each role exports its own series only: the writer's (`es_appends_total`,
`es_conflicts_total`) wherever a Store is, the publisher's (`es_published_total`,
`es_publish_lag_seconds`, `es_outbox_backlog`) where it relays, the workers'
(`es_handled_total`, `es_handler_seconds`, `es_handler_failures_total`, `es_parked_total`)
where handlers run; the archiver's (`es_archived_total`, `es_archive_lag_events`,
`es_archive_lag_seconds`) in `es-workers archive`."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any, NamedTuple

from prometheus_client import Counter, Gauge, Histogram

APPENDS = Counter("es_appends_total", "Events appended", ["entity_type"])
CONFLICTS = Counter("es_conflicts_total", "Appends refused by a concurrent writer", ["entity_type"])
PUBLISHED = Counter("es_published_total", "Outbox entries relayed to the bus", ["entity_type"])
HANDLED = Counter("es_handled_total", "Events handled", ["subscriber_id", "entity_type"])
HANDLER_SECONDS = Histogram(
    "es_handler_seconds", "Handler time per event", ["subscriber_id", "entity_type"],
    # From 100 us: most handlers (a dict update, one Redis or SQL call) take well under the
    # 5 ms that prometheus-client's default buckets start at.
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
             0.5, 1, 2.5, 5, 10, 30, 60),
)
HANDLER_FAILURES = Counter(
    "es_handler_failures_total", "Handler exceptions", ["subscriber_id", "entity_type"]
)
PARKED = Counter("es_parked_total", "Entities parked for a subscriber", ["subscriber_id"])
ARCHIVED = Counter("es_archived_total", "Events copied to the archive (PostgreSQL)",
                   ["entity_type"])


@cache
def publish_lag() -> Any:
    """The publisher's lag histogram, made by the first process that relays: a metric
    without labels exports its series from the moment it is made, and a worker process
    exported it as zeros (each role exports only its own series)."""
    return Histogram(
        "es_publish_lag_seconds",
        "Time from append to relay by the publisher",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )


@cache
def outbox_backlog() -> Any:
    """The outbox backlog gauge, made by the publisher (see `publish_lag`)."""
    return Gauge(
        "es_outbox_backlog", "Outbox entries not yet relayed (last seen)",
        multiprocess_mode="mostrecent",  # several processes report it: the latest wins
    )


class ArchiveLagMetrics(NamedTuple):
    """What an archiver found past the hot window, not yet archived, at its latest pass."""

    events: Any
    seconds: Any


@cache
def archive_lag() -> ArchiveLagMetrics:
    """The archiver's lag gauges, made by the first pass (see `publish_lag`). Each archiver
    reports the partitions it holds: sum the events across archivers, take the max age. An
    eventsourcing application's events are labelled `eventsourcing:<application>` (entity
    types hold no `:`), with no age (Redis keeps no time of its stored events)."""
    return ArchiveLagMetrics(
        Gauge("es_archive_lag_events", "Events past the hot window not yet archived, as the "
              "archiver's latest pass found them (its partitions)", ["entity_type"],
              multiprocess_mode="mostrecent"),
        Gauge("es_archive_lag_seconds", "Age of the oldest event past the hot window not yet "
              "archived, as the archiver's latest pass found it (0: none)", ["entity_type"],
              multiprocess_mode="mostrecent"),
    )


class HandlerMetrics(NamedTuple):
    """A subscriber's handler metrics for one entity type (the labelled series)."""

    handled: Any
    seconds: Any
    failures: Any


@cache
def handler_metrics(subscriber_id: str, entity_type: str) -> HandlerMetrics:
    """The series once per (subscriber, entity type): `labels()` costs ~2 us per call, and
    delivery counts every event."""
    return HandlerMetrics(
        HANDLED.labels(subscriber_id, entity_type),
        HANDLER_SECONDS.labels(subscriber_id, entity_type),
        HANDLER_FAILURES.labels(subscriber_id, entity_type),
    )


@cache
def appends(entity_type: str) -> Any:
    """The entity type's appended-events series, looked up once (every write counts)."""
    return APPENDS.labels(entity_type)


def declare_entity_type(entity_type: str) -> None:
    """Exports the entity type's writer counters at 0 from start-up (any process with a
    Store may write): a rule such as `rate(es_conflicts_total[5m]) > 0` only fires on a
    series that existed before it rose."""
    appends(entity_type)
    CONFLICTS.labels(entity_type)


def declare_publisher(entity_types: Iterable[str]) -> None:
    """Exports the publisher's series at 0 as it starts (in the publisher's process only)."""
    publish_lag()
    outbox_backlog()
    for entity_type in entity_types:
        PUBLISHED.labels(entity_type)


def declare_subscriber(subscriber_id: str, entity_type: str) -> None:
    """Exports the subscriber's counters at 0 from start-up (see `declare_entity_type`): the
    first parked entity then moves `es_parked_total` from 0 to 1, which `rate()` sees. Done
    where the handlers run: a Dramatiq worker as it boots, an in-process bus at
    `subscribe`; not the publisher."""
    handler_metrics(subscriber_id, entity_type)
    PARKED.labels(subscriber_id)
