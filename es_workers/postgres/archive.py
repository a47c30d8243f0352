"""The archive in PostgreSQL: events copied there from Redis, and read back as Redis holds them.

Each row keeps an entity stream entry's fields as append.lua wrote them (event name, the
JSON data as stored, personal fields still encrypted, the time in µs, store_event_id, log
number, metadata), so an archived event is decoded, upgraded and forgotten exactly as a hot
one: `entries` returns rows as XRANGE entries. Inserting is idempotent by (entity type,
entity ID, event number): a batch copied twice (an archiver killed before it marked it
archived) stores each event once.

One connection per archive, opened on first use and again after it broke; a PostgreSQL that
cannot be reached raises ArchiveUnavailableError naming it (never its password).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from ..errors import ArchiveUnavailableError, ConfigurationError
from .schema import EVENTS, TableLayout, check_version, migrate

ArchivedRow = tuple[str, str, int, int, int | None, str, bytes, int, str, bytes | None]
"""One event as archived: the values of `schema.COLUMNS`, in order."""
Entry = tuple[bytes, list[bytes]]
"""An entity stream entry as XRANGE returns it: ID `<event number>-0`, flat fields."""

_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError)


def archive_server(url: str) -> str:
    """The archive's `host:port/database`, for messages: never the password."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return f"{user}{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


_T = TypeVar("_T", bound="PostgresTable")


class PostgresTable:
    """One archive table of a prefix (its `layout`) in the PostgreSQL at `url`: the
    connection, the creation and migration of the table (`init()`), and idempotent inserts.
    The other calls check the table is at the version this code knows (ConfigurationError
    naming the command to run otherwise)."""

    layout: TableLayout = EVENTS

    def __init__(self, url: str, *, prefix: str = "es", connect_timeout_s: int = 5) -> None:
        self._url, self.prefix = url, prefix
        self.server = archive_server(url)
        self.table = self.layout.table(prefix)
        self.connect_timeout_s = connect_timeout_s
        self._connection: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        self._checked = False
        self._name = sql.Identifier(self.table)
        self._siblings: dict[type[PostgresTable], PostgresTable] = {}

    def sibling(self, kind: type[_T]) -> _T:
        """The table of another layout (`kind`) for the same PostgreSQL and prefix, on a
        connection of its own: made once (`es-workers status` asks at each refresh), closed
        with this one."""
        with self._lock:
            found = self._siblings.get(kind)
            if not isinstance(found, kind):
                found = self._siblings[kind] = kind(
                    self._url, prefix=self.prefix, connect_timeout_s=self.connect_timeout_s)
            return found

    @contextlib.contextmanager
    def _using(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        """The connection, for one call at a time; PostgreSQL failures become
        ArchiveUnavailableError (a broken connection is opened again on the next call)."""
        with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = psycopg.connect(
                        self._url, autocommit=True, connect_timeout=self.connect_timeout_s)
                    self._checked = False
                yield self._connection
            except _UNAVAILABLE as error:
                self._drop()
                raise ArchiveUnavailableError(self.server, error, doing=doing) from None
            except psycopg.errors.UndefinedTable:
                raise self._missing() from None

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = None

    def _missing(self) -> ConfigurationError:
        return ConfigurationError(
            f"the archive {self.server} has no table {self.table}: run `es-workers archive "
            "APP --init` (or start `es-workers archive APP`, which creates it)")

    def _ready(self, connection: psycopg.Connection[Any]) -> None:
        if not self._checked:
            check_version(connection, self.prefix, self.layout)
            self._checked = True

    def init(self) -> int:
        """Creates or migrates the prefix's table; returns the version it had (0: none)."""
        with self._using("creating the archive's table") as connection:
            had = migrate(connection, self.prefix, self.layout)
            self._checked = True
            return had

    def insert(self, rows: Sequence[Sequence[Any]]) -> int:
        """Stores the rows (values of the layout's columns) in one transaction (COPY into a
        scratch table, then INSERT ... ON CONFLICT DO NOTHING); returns how many were not
        there yet."""
        if not rows:
            return 0
        scratch = sql.Identifier(self.layout.scratch)
        with self._using("archiving events") as connection:
            self._ready(connection)
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute(sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING "
                    "DEFAULTS) ON COMMIT DELETE ROWS").format(scratch, self._name))
                columns = sql.SQL(", ").join(map(sql.Identifier, self.layout.columns))
                with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                        scratch, columns)) as copy:
                    for row in rows:
                        copy.write_row(row)
                cursor.execute(sql.SQL(
                    "INSERT INTO {} ({}) SELECT {} FROM {} "
                    "ON CONFLICT DO NOTHING").format(self._name, columns, columns, scratch))
                return max(0, cursor.rowcount)

    def _counts(self, doing: str, by: str, data: str) -> dict[str, tuple[int, int]]:
        """Rows and the bytes of their column `data`, per value of the column `by`."""
        with self._using(doing) as connection:
            self._ready(connection)
            rows = connection.execute(sql.SQL(
                "SELECT {by}, count(*), coalesce(sum(octet_length({data})), 0) FROM {table} "
                "GROUP BY {by}").format(by=sql.Identifier(by), data=sql.Identifier(data),
                                        table=self._name)).fetchall()
        return {str(key): (int(n), int(size)) for key, n, size in rows}

    def close(self) -> None:
        with self._lock:
            self._drop()
            for sibling in self._siblings.values():
                sibling.close()


class PostgresArchive(PostgresTable):
    """The archive of one prefix's events in the PostgreSQL at `url` (`ES_ARCHIVE_URL`).

    `init()` creates or migrates its table; the other calls check it is at the version
    this code knows (ConfigurationError naming the command to run otherwise)."""

    def entries(self, entity_type: str, entity_id: str, first: int, last: int) -> list[Entry]:
        """The entity's archived events numbered `first..last`, as XRANGE entries (those
        archived: a missing one is missing from the list, for the reader to refuse)."""
        with self._using(f"reading {entity_type} {entity_id!r} events {first}..{last}") as (
                connection):
            self._ready(connection)
            rows = connection.execute(
                _SELECT.format(self._name), [entity_type, entity_id, first, last],
                binary=True).fetchall()
        return [as_entry(row) for row in rows]

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per entity type: events archived and the bytes of their data."""
        return self._counts("counting archived events", "entity_type", "data")

    def delete_entity(self, entity_type: str, entity_id: str) -> int:
        """Deletes the entity's archived events (a tombstone); returns how many."""
        with self._using(f"deleting {entity_type} {entity_id!r}") as connection:
            self._ready(connection)
            cursor = connection.execute(sql.SQL(
                "DELETE FROM {} WHERE entity_type = %s AND entity_id = %s").format(self._name),
                [entity_type, entity_id])
            return max(0, cursor.rowcount)


class AsyncPostgresArchive:
    """`PostgresArchive`'s reads for asyncio (`AsyncRedisStorage(..., archive=...)`), on
    psycopg's AsyncConnection; the archiver and `init` are the sync archive's."""

    def __init__(self, url: str, *, prefix: str = "es", connect_timeout_s: int = 5) -> None:
        self._url, self.prefix = url, prefix
        self.server = archive_server(url)
        self.table = EVENTS.table(prefix)
        self.connect_timeout_s = connect_timeout_s
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._lock: asyncio.Lock | None = None
        self._name = sql.Identifier(self.table)

    async def entries(self, entity_type: str, entity_id: str, first: int,
                      last: int) -> list[Entry]:
        """As `PostgresArchive.entries`."""
        doing = f"reading {entity_type} {entity_id!r} events {first}..{last}"
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=self.connect_timeout_s)
                cursor = await self._connection.execute(
                    _SELECT.format(self._name), [entity_type, entity_id, first, last],
                    binary=True)
                rows = await cursor.fetchall()
            except _UNAVAILABLE as error:
                await self._drop()
                raise ArchiveUnavailableError(self.server, error, doing=doing) from None
            except psycopg.errors.UndefinedTable:
                raise ConfigurationError(
                    f"the archive {self.server} has no table {self.table}: run `es-workers "
                    "archive APP --init`") from None
        return [as_entry(row) for row in rows]

    async def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None

    async def close(self) -> None:
        await self._drop()


_SELECT = sql.SQL(
    "SELECT event_number, name, data, event_time_us, store_event_id, log_number, metadata "
    "FROM {} WHERE entity_type = %s AND entity_id = %s AND event_number BETWEEN %s AND %s "
    "ORDER BY event_number")


def as_entry(row: Sequence[Any]) -> Entry:
    """A row of `entries`' SELECT as the entry append.lua wrote (fields in its order)."""
    number, name, data, micros, event_id, logged, metadata = row
    fields = [b"n", _raw(name), b"d", bytes(data), b"t", b"%d" % micros, b"e", _raw(event_id)]
    if logged is not None:
        fields += (b"p", b"%d" % logged)
    if metadata is not None:
        fields += (b"m", bytes(metadata))
    return b"%d-0" % number, fields


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(value) if isinstance(
        value, memoryview) else str(value).encode()
