"""Errors raised by es_workers. Catch `EsError` to catch them all."""

from __future__ import annotations

from .position import Position


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


class InvalidContentError(EsError, ValueError):
    """An event's content cannot be stored as JSON that reads back: pydantic cannot
    encode it (text with lone surrogates, values nested deeper than 256 levels, objects of
    unknown types), or its JSON reader would refuse what was written (nesting deeper than
    200 levels, integers of more than 4,300 digits), or it holds a NaN or an infinity, which
    JSON has no number for. Nothing of the write was stored."""

    def __init__(self, entity_type: str, entity_id: str, event_number: int, name: str,
                 reason: str) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.event_number = event_number
        self.reason = reason
        super().__init__(
            f"{entity_type} {entity_id!r} event {event_number} ({name}) cannot be stored: "
            f"{reason}; nothing was written. Stored JSON must read back: valid Unicode text, "
            "at most 200 levels of nesting, integers of at most 4,300 digits, finite numbers."
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


class TruncatedError(EsError):
    """A read reached events that were removed: never a silent partial history.

    Of the log (trimmed below `ES_LOG_KEEP`): `first_kept` is the first position still
    there; read again from just before it (e.g. `after=Position(p, first_kept.number - 1)`).
    Of an entity (`store.truncate_before`, a `Retention` limit): `first_kept_event` is its
    first kept event number (`first_kept` is None); `open_from(entity_type, entity_id,
    first_kept_event - 1)` reads what is kept."""

    def __init__(self, what: str, first_kept: Position | None, *,
                 first_kept_event: int | None = None) -> None:
        self.first_kept = first_kept
        self.first_kept_event = first_kept_event
        if first_kept is not None:
            super().__init__(
                f"{what} was trimmed: its first kept position is {first_kept}; read after "
                f"p{first_kept.partition}:{first_kept.number - 1} to go on from there"
            )
        else:
            super().__init__(
                f"{what} was truncated: its first kept event is {first_kept_event}; open it "
                f"from event {(first_kept_event or 1) - 1} (open_from) to read what is kept"
            )

    @classmethod
    def of_entity(cls, entity_type: str, entity_id: str, first_kept_event: int) -> TruncatedError:
        """The error for a read of an entity from before its first kept event."""
        return cls(f"{entity_type} {entity_id!r}", None, first_kept_event=first_kept_event)


class StreamDeletedError(EsError):
    """The entity was tombstoned (`store.tombstone`): gone for good. Reading it or writing to
    it raises this; nothing is written."""

    def __init__(self, entity_type: str, entity_id: str) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        super().__init__(f"{entity_type} {entity_id!r} was tombstoned: it can never be read or "
                         "written again (use another entity ID)")


class SubscriberError(EsError, ValueError):
    """A subscriber cannot be registered (bad ID, or the ID is taken for that entity type)."""


class UnknownNameError(EsError, LookupError):
    """An entity type or subscriber ID this app does not have (the message names the known
    ones)."""


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


class RebuildError(EsError):
    """`Store.rebuild` could not start or finish: another rebuild holds the subscriber, its
    handlers kept running past the timeout, or a step failed. The message says whether
    anything was reset (then run the rebuild again)."""


class StorageUnavailableError(EsError):
    """Redis could not be reached (or refused the command while failing over or loading).

    `server` names the Redis (never its password), `cause` is the underlying error, and
    `outcome_unknown` says whether a write may have been applied anyway: the request may have
    reached Redis before the connection failed. Calling `stream.write` again on the same
    Stream with the same contents then applies the write exactly once (it re-sends the same
    events, which the append script recognises).
    """

    def __init__(self, server: str, cause: BaseException, *, outcome_unknown: bool = False,
                 doing: str = "") -> None:
        self.server = server
        self.cause = cause
        self.outcome_unknown = outcome_unknown
        what = f" while {doing}" if doing else ""
        if outcome_unknown:
            advice = ("the write may or may not have been applied: write the same contents "
                      "again on the same Stream to apply it exactly once")
        else:
            advice = "nothing was written; try again once Redis is back"
        super().__init__(
            f"Redis {server} is unavailable{what}: {type(cause).__name__}: {cause}; {advice}"
        )


class StorageFullError(StorageUnavailableError):
    """Redis refused a write because its memory is full (`maxmemory` with `noeviction`).

    The append script never ran, so nothing of the write was stored; writes work again once
    memory is freed or `maxmemory` raised.
    """

    def __init__(self, server: str, cause: BaseException) -> None:
        self.server = server
        self.cause = cause
        self.outcome_unknown = False
        EsError.__init__(
            self,
            f"Redis {server} is out of memory (maxmemory reached): nothing was written; "
            f"free memory or raise maxmemory, then write again ({cause})",
        )


class ArchiveUnavailableError(StorageUnavailableError):
    """The archive (PostgreSQL, `ES_ARCHIVE_URL`) could not be reached while reading events
    only it holds, or while archiving. `server` names it (never its password). A read never
    returns part of an entity's history instead: reads of the hot events in Redis alone
    keep working."""

    def __init__(self, server: str, cause: BaseException, *, doing: str = "") -> None:
        self.server = server
        self.cause = cause
        self.outcome_unknown = False
        what = f" while {doing}" if doing else ""
        EsError.__init__(
            self,
            f"the archive (PostgreSQL {server}) is unavailable{what}: "
            f"{type(cause).__name__}: {str(cause).strip()}; try again once it is back",
        )


class DurabilityError(EsError):
    """A write was stored on the primary but not confirmed on the replicas asked for
    (`ES_WAIT_REPLICAS`) within `ES_WAIT_TIMEOUT_MS`: a failover now could lose it."""

    def __init__(self, entity_type: str, entity_id: str, first: int, last: int, *,
                 wanted: int, confirmed: int, what: str = "replicas") -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.first = first
        self.last = last
        self.wanted = wanted
        self.confirmed = confirmed
        super().__init__(
            f"{entity_type} {entity_id!r} events {first}..{last} are stored on the primary "
            f"but confirmed on {confirmed} of the {wanted} {what} asked for; they are not "
            "lost, but a failover before they replicate could lose them"
        )
