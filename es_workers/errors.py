"""Errors raised by es_workers. Catch `EsError` to catch them all."""

from __future__ import annotations


class EsError(Exception):
    """Base class of every error es_workers raises on purpose."""


class InvalidNameError(EsError, ValueError):
    """An entity type, entity ID, subscriber ID or key prefix is empty or malformed."""


class ConcurrencyError(EsError):
    """Another writer appended to the entity first; nothing of this write was stored.

    Re-read the stream (open it again and project) and decide whether to write again.
    """

    def __init__(self, entity_type: str, entity_id: str, expected: int, actual: int) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{entity_type} {entity_id!r}: expected position {expected}, but the stream is at "
            f"{actual}; nothing was written. Read the stream again and retry the command."
        )


class InvalidMetadataError(EsError, ValueError):
    """Metadata given to a write is not a small mapping of str to str; nothing was written."""


class NotRegisteredError(EsError, TypeError):
    """A `Content` class is not registered for the entity type it is written to."""


class EventTooLargeError(EsError, ValueError):
    """An event is larger encoded than the storage's limit (`ES_MAX_EVENT_BYTES`); nothing
    of the write was stored."""

    def __init__(self, entity_type: str, entity_id: str, event_number: int, name: str,
                 size: int, limit: int) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.event_number = event_number
        self.size = size
        self.limit = limit
        super().__init__(
            f"{entity_type} {entity_id!r} event {event_number} ({name}) is {size:,} bytes "
            f"encoded, over the limit of {limit:,} (ES_MAX_EVENT_BYTES); nothing was written. "
            "Keep large payloads elsewhere (a blob store) and put a reference in the event."
        )


class StreamNotReadError(EsError):
    """`Stream.write` on a stream opened with `open_from(n)` before reading it."""


class DecodeError(EsError):
    """A stored event cannot be turned back into its `Content`.

    Carries `key` (the Redis key or storage location), `entity_type`, `entity_id` and
    `event_number`, so the bad record can be found.
    """

    def __init__(
        self, message: str, *, key: str, entity_type: str, entity_id: str, event_number: int
    ) -> None:
        self.key = key
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.event_number = event_number
        super().__init__(
            f"{message} (key {key!r}, {entity_type} {entity_id!r}, event number {event_number})"
        )


class UnknownEventError(DecodeError):
    """A stored event name is not registered for its entity type."""

    def __init__(
        self, *, name: str, key: str, entity_type: str, entity_id: str, event_number: int
    ) -> None:
        self.name = name
        super().__init__(
            f"unknown event {name!r}: register its Content class for {entity_type!r} "
            f"(Store(events={{{entity_type!r}: [...]}}))",
            key=key,
            entity_type=entity_type,
            entity_id=entity_id,
            event_number=event_number,
        )


class InvalidPayloadError(DecodeError):
    """A stored payload does not validate against its registered `Content` class."""


class CorruptEventError(DecodeError):
    """A stored record lacks fields or has values of the wrong form."""


class SubscriberError(EsError, ValueError):
    """A subscriber cannot be registered (bad ID, or the ID is taken for that entity type)."""


class ConfigurationError(EsError, ValueError):
    """Settings or storage parameters are invalid or disagree with what Redis holds."""


class WaitTimeoutError(EsError, TimeoutError):
    """`Store.wait_for` ran out of time; `behind` maps each subscriber still behind to the
    last event number it has handled."""

    def __init__(self, entity_type: str, entity_id: str, event_number: int,
                 behind: dict[str, int], timeout: float) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.event_number = event_number
        self.behind = behind
        lagging = ", ".join(f"{s} (handled up to {n})" for s, n in sorted(behind.items()))
        super().__init__(
            f"{entity_type} {entity_id!r}: not handled up to event {event_number} within "
            f"{timeout:g} s by {lagging}; are the workers (and a publisher) running?"
        )


class ParkedError(EsError):
    """`Store.wait_for` found the entity parked for a subscriber at or before the event
    waited for: it will not get there until `es-workers parked retry|skip`."""

    def __init__(self, subscriber_id: str, entity_type: str, entity_id: str,
                 event_number: int, error: str) -> None:
        self.subscriber_id = subscriber_id
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.event_number = event_number
        self.error = error
        super().__init__(
            f"{entity_type} {entity_id!r} is parked for subscriber {subscriber_id!r} at event "
            f"{event_number} ({error}); es-workers parked retry|skip"
        )


class NotParkedError(EsError, LookupError):
    """`retry` or `skip` named an entity that is not parked for that subscriber."""
