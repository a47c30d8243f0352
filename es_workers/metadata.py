"""Event metadata: what is checked, how it is stored, and what is added automatically.

`stream.write(*contents, metadata={...})` stores a mapping of str to str with the events.
A write made while a subscriber handles an event (any bus, any process) also stores
`causation_id` (the handled event's `store_event_id`) and `correlation_id` (the handled
event's `correlation_id`); keys the caller gives win. A root write (no handler, no
metadata, no tracer provider set) stores nothing extra.

Limits: at most `MAX_ENTRIES` entries; keys of 1 to `MAX_KEY` characters among letters,
digits and `_ . : -`; values text of at most `MAX_VALUE` characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

from .errors import InvalidMetadataError
from .event import NO_METADATA, Event

MAX_ENTRIES = 32
MAX_KEY = 64
MAX_VALUE = 2048
_KEY = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_KEY}}}")

_handled: ContextVar[Event | None] = ContextVar("es_workers_handled_event", default=None)


def check(metadata: object) -> dict[str, str]:
    """The metadata as a plain dict, or InvalidMetadataError naming what is wrong."""
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"metadata must be a mapping of str to str, not {metadata!r}")
    if len(metadata) > MAX_ENTRIES:
        raise InvalidMetadataError(
            f"metadata has {len(metadata)} entries; at most {MAX_ENTRIES} are allowed"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise InvalidMetadataError(
                f"metadata key {key!r}: use 1 to {MAX_KEY} letters, digits, '_', '.', ':' or '-'"
            )
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            raise InvalidMetadataError(
                f"metadata value of {key!r} must be text of at most {MAX_VALUE} characters, "
                f"not {type(value).__name__} {str(value)[:40]!r}"
            )
    return dict(metadata)


def encode(metadata: Mapping[str, str]) -> str:
    """JSON of the metadata; '' when empty (nothing is stored then)."""
    return json.dumps(dict(metadata), ensure_ascii=False, separators=(",", ":")) if metadata else ""


def decode(data: str | bytes) -> Mapping[str, str]:
    """Stored metadata back as a read-only mapping (ValueError if it is not a JSON object
    of strings)."""
    if not data:
        return NO_METADATA
    value = json.loads(data)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"metadata is not a JSON object of strings: {data!r}")
    return MappingProxyType(value)


@contextmanager
def handling(event: Event) -> Iterator[None]:
    """Marks `event` as the one being handled in this context (thread or task), so writes
    made meanwhile record it as their cause."""
    token = _handled.set(event)
    try:
        yield
    finally:
        _handled.reset(token)


def for_write(given: Mapping[str, str] | None, extra: Mapping[str, str] | None = None
              ) -> Mapping[str, str]:
    """The metadata a write stores: causation from the event being handled (if any), then
    `extra` (e.g. the trace context), then the caller's keys, which win."""
    checked = check(given) if given is not None else None
    handled = _handled.get()
    if handled is None and not checked and not extra:
        return NO_METADATA
    merged: dict[str, str] = {}
    if handled is not None:
        merged["causation_id"] = handled.store_event_id
        merged["correlation_id"] = handled.correlation_id
    merged.update(extra or {})
    merged.update(checked or {})
    return MappingProxyType(merged)
