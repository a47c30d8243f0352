"""The archive's tables in PostgreSQL, created and migrated by the project.

One table of events per prefix, `es_events_<prefix>`, keyed by (entity type, entity ID,
event number), with an index for position reads (partition, log number); one table of the
`eventsourcing` applications' stored events per prefix, `es_recorded_<prefix>` (see
`RECORDED`); the version of each table's layout in `es_workers_schema`. `migrate` applies the
steps a table lacks, in one transaction under an advisory lock (several archivers may start
at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..errors import ConfigurationError

VERSIONS_TABLE = "es_workers_schema"
# Each step takes the table's layout from the version before it to its own number.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {table} (
        entity_type text NOT NULL,
        entity_id text NOT NULL,
        event_number bigint NOT NULL,
        partition integer NOT NULL,
        log_number bigint,
        name text NOT NULL,
        data bytea NOT NULL,
        event_time_us bigint NOT NULL,
        store_event_id text NOT NULL,
        metadata bytea,
        archived_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (entity_type, entity_id, event_number)
    );
    CREATE INDEX {position_index} ON {table} (partition, log_number)
        WHERE log_number IS NOT NULL;
    """,
)
VERSION = len(MIGRATIONS)
COLUMNS = ("entity_type", "entity_id", "event_number", "partition", "log_number", "name",
           "data", "event_time_us", "store_event_id", "metadata")




@dataclass(frozen=True)
class TableLayout:
    """One kind of archive table: its name per prefix (`<stem><prefix>`: a prefix is at most
    40 of `[A-Za-z0-9_.-]`, so it fits PostgreSQL's 63 bytes; always quoted), the steps that
    build it, the columns an insert fills and its scratch table (a temporary one, named so
    that no prefix's table has its name)."""

    stem: str
    migrations: tuple[str, ...]
    columns: tuple[str, ...]
    scratch: str

    @property
    def version(self) -> int:
        return len(self.migrations)

    def table(self, prefix: str) -> str:
        return f"{self.stem}{prefix}"


EVENTS = TableLayout("es_events_", MIGRATIONS, COLUMNS, "es_archive_batch")
RECORDED = TableLayout(
    "es_recorded_",
    (
        """
        CREATE TABLE {table} (
            application text NOT NULL,
            purpose text NOT NULL,
            originator_id text NOT NULL,
            originator_uuid boolean NOT NULL,
            version bigint NOT NULL,
            topic text NOT NULL,
            state bytea NOT NULL,
            notification_id bigint,
            archived_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (application, purpose, originator_id, version)
        );
        CREATE INDEX {position_index} ON {table} (application, notification_id)
            WHERE notification_id IS NOT NULL;
        """,
    ),
    ("application", "purpose", "originator_id", "originator_uuid", "version", "topic", "state",
     "notification_id"),
    "es_archive_recorded_batch",
)
"""The stored events of `eventsourcing` applications (es_workers.eventsourcing) that
`es-workers archive` moved out of Redis (or, for the notifications it moved out of the
application's log, copied: an aggregate's newest events stay hot): keyed by (application,
purpose, originator ID, version), with an index for notification reads; `originator_uuid`
tells whether the originator ID is a UUID, as the log's `u` does."""


def table_name(prefix: str) -> str:
    """The prefix's table of es_workers' own events."""
    return EVENTS.table(prefix)


def migrate(connection: Any, prefix: str, layout: TableLayout = EVENTS) -> int:
    """Creates or migrates the prefix's table of `layout` to its version; returns the
    version it had."""
    table = layout.table(prefix)
    names = {"table": sql.Identifier(table),
             "position_index": sql.Identifier(f"{table}_position")}
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [VERSIONS_TABLE])
        connection.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, "
                                   "version integer NOT NULL)").format(
                                       sql.Identifier(VERSIONS_TABLE)))
        had = stored_version(connection, table)
        if had > layout.version:
            raise newer_schema(table, had, layout.version)
        for step in layout.migrations[had:]:
            connection.execute(sql.SQL(step).format(**names))
        connection.execute(
            sql.SQL("INSERT INTO {} (name, version) VALUES (%s, %s) ON CONFLICT (name) DO "
                    "UPDATE SET version = EXCLUDED.version").format(
                        sql.Identifier(VERSIONS_TABLE)), [table, layout.version])
    return had


def stored_version(connection: Any, table: str) -> int:
    """The table's layout version (0: none)."""
    exists = connection.execute("SELECT to_regclass(%s)", [f'"{VERSIONS_TABLE}"']).fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = connection.execute(sql.SQL("SELECT version FROM {} WHERE name = %s").format(
        sql.Identifier(VERSIONS_TABLE)), [table]).fetchone()
    return int(row[0]) if row else 0


def check_version(connection: Any, prefix: str, layout: TableLayout = EVENTS) -> None:
    """ConfigurationError unless the prefix's table of `layout` is at its version."""
    table = layout.table(prefix)
    found = stored_version(connection, table)
    if found > layout.version:
        raise newer_schema(table, found, layout.version)
    if found < layout.version:
        raise ConfigurationError(
            f"the archive's table {table} is at version {found}, not {layout.version}: run "
            "`es-workers archive APP --init` (or start `es-workers archive APP`, which "
            "migrates it)")


def newer_schema(table: str, found: int, known: int = VERSION) -> ConfigurationError:
    return ConfigurationError(
        f"the archive's table {table} is at version {found}, newer than this es_workers "
        f"knows ({known}): upgrade es_workers")
