"""The archive of `eventsourcing` applications' stored events (es_workers.eventsourcing) in
PostgreSQL: the table `es_recorded_<prefix>` (`schema.RECORDED`), filled by the recorders'
archiver (`es_workers.redis.recorder_archiver`) and read by the recorders when a read
reaches below an aggregate's archived mark. Inserting is idempotent by (application,
purpose, originator ID, version)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from .archive import PostgresTable
from .schema import RECORDED

RecordedRow = tuple[str, str, str, bool, int, str, bytes, int | None]
"""One stored event as archived: application, purpose, originator ID, whether it is a UUID,
version, topic, state, notification ID (None: not logged)."""
NotificationRow = tuple[int, str, bool, int, str, bytes]
"""A notification as archived: ID, originator ID, whether it is a UUID, version, topic,
state."""


class PostgresRecordedArchive(PostgresTable):
    """The archived stored events of the eventsourcing applications under one prefix."""

    layout = RECORDED

    def events(self, application: str, purpose: str, originator_id: str, *,
               gt: int | None = None, lte: int | None = None, desc: bool = False,
               limit: int | None = None) -> list[tuple[int, str, bytes]]:
        """The aggregate's archived events (version, topic, state) in `gt < version <= lte`,
        in version order (newest first with `desc`), at most `limit`."""
        where = [sql.SQL("application = %s AND purpose = %s AND originator_id = %s")]
        values: list[object] = [application, purpose, originator_id]
        if gt is not None:
            where.append(sql.SQL("version > %s"))
            values.append(gt)
        if lte is not None:
            where.append(sql.SQL("version <= %s"))
            values.append(lte)
        query = sql.SQL("SELECT version, topic, state FROM {} WHERE {} ORDER BY version {}"
                        ).format(self._name, sql.SQL(" AND ").join(where),
                                 sql.SQL("DESC" if desc else "ASC"))
        if limit is not None:
            query = sql.SQL("{} LIMIT %s").format(query)
            values.append(limit)
        with self._using(f"reading {application} {purpose} of {originator_id}") as connection:
            self._ready(connection)
            rows = connection.execute(query, values, binary=True).fetchall()
        return [(int(version), str(topic), bytes(state)) for version, topic, state in rows]

    def states(self, application: str, notification_ids: Sequence[int]) -> dict[int, bytes]:
        """The states of the application's archived events with these notification IDs."""
        if not notification_ids:
            return {}
        with self._using(f"reading {application} notifications") as connection:
            self._ready(connection)
            rows = connection.execute(sql.SQL(
                "SELECT notification_id, state FROM {} WHERE application = %s AND "
                "notification_id = ANY(%s)").format(self._name),
                [application, list(notification_ids)], binary=True).fetchall()
        return {int(number): bytes(state) for number, state in rows}

    def notifications(self, application: str, first: int, last: int | None,
                      topics: Sequence[str], limit: int) -> list[NotificationRow]:
        """The application's archived notifications numbered `first..last` (None: no end),
        of `topics` (empty: all), in order, at most `limit`."""
        where = [sql.SQL("application = %s AND notification_id >= %s")]
        values: list[Any] = [application, first]
        if last is not None:
            where.append(sql.SQL("notification_id <= %s"))
            values.append(last)
        if topics:
            where.append(sql.SQL("topic = ANY(%s)"))
            values.append(list(topics))
        with self._using(f"reading {application} notifications from {first}") as connection:
            self._ready(connection)
            rows = connection.execute(sql.SQL(
                "SELECT notification_id, originator_id, originator_uuid, version, topic, "
                "state FROM {} WHERE {} ORDER BY notification_id LIMIT %s").format(
                    self._name, sql.SQL(" AND ").join(where)), [*values, limit],
                binary=True).fetchall()
        return [(int(n), str(o), bool(u), int(v), str(t), bytes(state))
                for n, o, u, v, t, state in rows]

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per application: events archived and the bytes of their states."""
        return self._counts("counting archived stored events", "application", "state")
