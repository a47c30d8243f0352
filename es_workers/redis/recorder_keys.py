"""The Redis keys of the `eventsourcing` applications under an es_workers prefix: here,
apart from the recorders, so that what only names or counts them (`es-workers status`, the
dashboard, the archiver) runs without the eventsourcing library installed."""

from __future__ import annotations

from uuid import UUID

from ..errors import ConfigurationError


class ApplicationKeys:
    """The keys of one eventsourcing application under an es_workers prefix."""

    def __init__(self, prefix: str, application_name: str) -> None:
        if not application_name or any(sign in application_name for sign in "{}"):
            raise ConfigurationError(
                f"eventsourcing application name {application_name!r} cannot name Redis "
                "keys: it must be set and hold neither '{' nor '}' (its hash tag)"
            )
        self.prefix, self.application = prefix, application_name
        self.base = f"{prefix}:es:{{{application_name}}}"

    def aggregate(self, purpose: str, originator_id: UUID | str) -> str:
        return f"{self.base}:{purpose}:{originator_id}"

    def notifications(self) -> str:
        return f"{self.base}:notifications"

    def tracking(self) -> str:
        return f"{self.base}:tracking"

    def archived(self, purpose: str) -> str:
        """The hash of archived marks: originator ID -> version archived up to."""
        return f"{self.base}:archive:marks:{purpose}"

    def archiver(self, name: str) -> str:
        """The archiver's keys: `log` (the notification ID up to which the archive holds
        the log's events and the log no longer its entries), `lease`, `heads` (originator
        ID -> newest version seen in the log), `scanned` (the log's entries read up to)."""
        return f"{self.base}:archive:{name}"


def applications_key(prefix: str) -> str:
    """The set of the names of the eventsourcing applications under the prefix (the factory
    adds its application's when it makes a recorder; the archiver reads it)."""
    return f"{prefix}:es:applications"
