"""The archive of old events in PostgreSQL (extra `es_workers[archive]`): its table
(`schema.py`) and the copies and reads of events there (`archive.py`). The Redis side, what
is archived and when, is `es_workers.redis.archiver`."""

from .archive import AsyncPostgresArchive, PostgresArchive

__all__ = ["AsyncPostgresArchive", "PostgresArchive"]
