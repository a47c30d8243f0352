"""The archive of old events in PostgreSQL (extra `es_workers[archive]`): its tables
(`schema.py`), the copies and reads of events there (`archive.py`), and of the
`eventsourcing` applications' stored events (`recorded.py`). The Redis side, what is
archived and when, is `es_workers.redis.archiver` and `es_workers.redis.recorder_archiver`."""

from .archive import AsyncPostgresArchive, PostgresArchive
from .recorded import PostgresRecordedArchive

__all__ = ["AsyncPostgresArchive", "PostgresArchive", "PostgresRecordedArchive"]
