"""Recorders of the `eventsourcing` library on Redis (`es_workers.eventsourcing` builds them).

One eventsourcing application keeps all its keys under `<prefix>:es:{<app name>}:`, one hash
tag, so on a Redis Cluster they share a slot and `record.lua` may write them in one step:

- `...:<purpose>:<originator ID>` a stream per aggregate (purpose `events` or `snapshots`),
  entry ID `<version>-1`, fields topic and state (the StoredEvent's bytes, as they are);
- `...:notifications` the application's log: entry ID `<notification ID>-0`, one per event,
  pointing at its aggregate's entry; gap-free, in commit order (see record.lua);
- `...:tracking` a hash: upstream application name -> notification ID processed;
- with an archive (`ES_ARCHIVE_URL`, see `recorder_archiver.py`): `...:archive:marks:<purpose>`
  a hash originator ID -> the version up to which the aggregate's events are in the archive
  (and no longer in Redis, but for its newest), and the archiver's own keys under
  `...:archive:`; `<prefix>:es:applications` is the set of the applications' names.

A read that reaches at or below an aggregate's mark takes those events from the archive,
then the hot ones from Redis; it raises ArchiveUnavailableError rather than return part.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol
from uuid import UUID, uuid4

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from ..errors import CorruptEventError
from .durability import Durability
from .failures import server_name, translated
from .keys import text
from .layouts import RECORD
from .recorder_keys import ApplicationKeys
from .scripts import Script

# How long a subscription's listener blocks on the log before it looks whether it was
# stopped: the longest a stopped subscription's thread lingers.
LISTEN_BLOCK_MS = 100


class RecordedArchive(Protocol):
    """What the recorders read of an archive (`es_workers.postgres.PostgresRecordedArchive`)."""

    server: str

    def events(self, application: str, purpose: str, originator_id: str, *,
               gt: int | None = None, lte: int | None = None, desc: bool = False,
               limit: int | None = None) -> list[tuple[int, str, bytes]]: ...

    def states(self, application: str, notification_ids: Sequence[int]) -> dict[
        int, bytes]: ...

    def notifications(self, application: str, first: int, last: int | None,
                      topics: Sequence[str], limit: int) -> list[
        tuple[int, str, bool, int, str, bytes]]: ...


class _Recording:
    """Runs record.lua: events (logged or not) and a tracking record, in one atomic step,
    then waits for what `durability` asks (replicas, the append-only file)."""

    def __init__(self, client: Any, keys: ApplicationKeys, purpose: str, *, logged: bool,
                 durability: Durability | None = None) -> None:
        self.client, self.keys, self.purpose, self.logged = client, keys, purpose, logged
        self.durability = durability or Durability()
        self.server = server_name(client)
        # A documented hook: tests replace it to send a write twice, as redis-py does when
        # a reply is lost.
        self.script = Script(client, "record")

    def record(self, events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        """Writes the events and the tracking record; returns the events' notification IDs
        (empty when not logged); IntegrityError, nothing written, on a conflict."""
        keys, args = self._keys_and_args(events, tracking)
        with translated(self.server, f"recording in {self.keys.base}", writing=True):
            if self.durability.waits:
                reply, confirmed = self.script.then(keys, args, self.durability.command())
            else:
                reply, confirmed = self.script(keys, args), None
        outcome, detail = reply
        if outcome == 1:
            assert tracking is not None
            raise IntegrityError(
                f"tracking {tracking.application_name!r} notification "
                f"{tracking.notification_id}: already at {detail}, nothing written")
        if outcome == 2:
            event = events[int(detail) - 1]
            raise IntegrityError(
                f"{event.topic} version {event.originator_version} of {event.originator_id}: "
                "that version or a later one is already recorded, nothing written")
        if self.durability.waits:
            self._check_durable(confirmed, events)
        first = int(detail)
        return list(range(first, first + len(events))) if self.logged else []

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Redis failures of a read as es_workers' errors (StorageUnavailableError...)."""
        return translated(self.server, f"reading {self.keys.base}")

    def _keys_and_args(self, events: Sequence[StoredEvent],
                       tracking: Tracking | None) -> tuple[list[str], list[Any]]:
        streams: list[tuple[str]] = []
        items: list[tuple[Any, ...]] = []
        for event in events:
            if event.originator_version < 0:
                raise IntegrityError(f"version {event.originator_version} of {event.topic} "
                                     f"{event.originator_id} is negative: it cannot be stored")
            streams.append((self.keys.aggregate(self.purpose, event.originator_id),))
            items.append((event.originator_version, event.topic, event.state,
                          str(event.originator_id), "1" if isinstance(event.originator_id, UUID)
                          else "0"))
        keys = RECORD.keys.pack(streams, log=self.keys.notifications(),
                                tracking=self.keys.tracking())
        args = RECORD.args.pack(
            items, logged="1" if self.logged else "0",
            upstream=tracking.application_name if tracking else "",
            tracked=tracking.notification_id if tracking else 0, count=len(events),
            # The same on redis-py's retry of this call: record.lua then knows its write.
            write_token=uuid4().hex)
        return keys, args

    def _check_durable(self, confirmed: Any, events: Sequence[StoredEvent]) -> None:
        if events:
            self.durability.check(confirmed, events[0].topic, str(events[0].originator_id),
                                  events[0].originator_version, events[-1].originator_version)
        else:
            self.durability.check(confirmed, "tracking", self.keys.base, 0, 0)


class RedisAggregateRecorder(AggregateRecorder):
    """Stored events (or snapshots: `purpose`) of an application's aggregates. An
    aggregate's events are recorded in increasing versions: a version at or below the last
    recorded one raises IntegrityError."""

    def __init__(self, client: Any, keys: ApplicationKeys, purpose: str = "events", *,
                 durability: Durability | None = None,
                 archive: RecordedArchive | None = None) -> None:
        self.client, self.keys, self.purpose = client, keys, purpose
        self.archive = archive
        self.recording = _Recording(client, keys, purpose, logged=self._logs(),
                                     durability=durability)

    def _logs(self) -> bool:
        return False

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self.recording.record(stored_events, kwargs.get("tracking"))
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        if lte is not None and lte < 0:
            return []
        low = "-" if gt is None else f"{max(gt + 1, 0)}-0"
        high = "+" if lte is None else f"{lte}-1"
        key = self.keys.aggregate(self.purpose, originator_id)
        with self.recording.reading():
            if self.archive is None:
                entries = (self.client.xrevrange(key, high, low, count=limit) if desc
                           else self.client.xrange(key, low, high, count=limit))
                mark = None
            else:  # the entries, then the mark: it covers whatever went since (see _joined)
                pipe = self.client.pipeline(transaction=False)
                (pipe.xrevrange(key, high, low, count=limit) if desc
                 else pipe.xrange(key, low, high, count=limit))
                pipe.hget(self.keys.archived(self.purpose), str(originator_id))
                entries, mark = pipe.execute()
        hot = [(_number(entry_id), text(fields[b"t"]), fields[b"s"])
               for entry_id, fields in entries]
        if mark is not None:
            hot = self._joined(originator_id, hot, int(mark), gt=gt, lte=lte, desc=desc,
                               limit=limit)
        return [StoredEvent(originator_id=originator_id, originator_version=version,
                            topic=topic, state=state) for version, topic, state in hot]

    def _joined(self, originator_id: UUID | str, hot: list[tuple[int, str, bytes]], mark: int,
                *, gt: int | None, lte: int | None, desc: bool,
                limit: int | None) -> list[tuple[int, str, bytes]]:
        """The range's events: the archive's up to `mark`, Redis's after it. `hot` was read
        before the mark, so the archiver may have removed some of its older events since
        (then the mark covers them) but none of the range past them: the archive's up to
        the mark and `hot` past it have no gap. The archive is asked only if the range
        reaches the mark and the hot events do not fill the limit (newest first)."""
        hot = [event for event in hot if event[0] > mark]
        if (gt is not None and gt >= mark) or (desc and limit is not None
                                                and len(hot) >= limit):
            return hot[:limit] if limit is not None else hot
        assert self.archive is not None
        upto = mark if lte is None else min(mark, lte)
        wanted = None if limit is None else limit - (len(hot) if desc else 0)
        cold = self.archive.events(self.keys.application, self.purpose, str(originator_id),
                                   gt=gt, lte=upto, desc=desc, limit=wanted)
        joined = [*hot, *cold] if desc else [*cold, *hot]
        return joined[:limit] if limit is not None else joined


class RedisApplicationRecorder(RedisAggregateRecorder, ApplicationRecorder):
    """Also numbers the events in the application's log: notification IDs 1, 2, ... with no
    gap, in the order the writes committed."""

    def _logs(self) -> bool:
        return True

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self.recording.record(stored_events, kwargs.get("tracking"))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        first = 1 if start is None else max(start + (0 if inclusive_of_start else 1), 1)
        last = "+" if stop is None else f"{stop}-0"
        wanted = {topic.encode() for topic in topics}
        size = max(limit, 100) if wanted else limit  # filtered: pages of at least 100
        found: list[tuple[bytes, dict[bytes, bytes]]] = []
        low, mark = f"{first}-0", None
        while len(found) < limit:
            with self.recording.reading():
                if self.archive is None:
                    page = self.client.xrange(self.keys.notifications(), low, last, count=size)
                else:  # the page, then the log's mark: it covers whatever went since
                    pipe = self.client.pipeline(transaction=False)
                    pipe.xrange(self.keys.notifications(), low, last, count=size)
                    pipe.get(self.keys.archiver("log"))
                    page, mark = pipe.execute()
            found += [entry for entry in page if not wanted or entry[1][b"t"] in wanted]
            if len(page) < size:
                break
            low = f"{_number(page[-1][0]) + 1}-0"
        if mark is not None and int(mark) >= first:
            return self._joined_notifications(found, first, int(mark), stop, topics, limit)
        return self._with_states(found[:limit])

    def _joined_notifications(self, found: list[tuple[bytes, dict[bytes, bytes]]], first: int,
                              mark: int, stop: int | None, topics: Sequence[str],
                              limit: int) -> list[Notification]:
        """The notifications the archive holds from `first` up to the log's `mark`, then
        the log's after it (read before the mark: the two have no gap)."""
        assert self.archive is not None
        cold = [Notification(id=number, originator_id=UUID(originator) if is_uuid
                             else originator, originator_version=version, topic=topic,
                             state=state)
                for number, originator, is_uuid, version, topic, state in
                self.archive.notifications(self.keys.application, first,
                                           mark if stop is None else min(mark, stop),
                                           topics, limit)]
        if len(cold) >= limit:
            return cold
        hot = [entry for entry in found if _number(entry[0]) > mark]
        return cold + self._with_states(hot[:limit - len(cold)])

    def _with_states(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Notification]:
        """The log's entries as notifications, each with its event's state (one round trip:
        events are never changed, so reading them after the log is consistent)."""
        pipe = self.client.pipeline(transaction=False)
        for _, fields in entries:
            version = text(fields[b"v"])
            pipe.xrange(self.keys.aggregate(self.purpose, text(fields[b"o"])),
                        f"{version}-1", f"{version}-1")
        with self.recording.reading():
            states = pipe.execute() if entries else []
        # An event gone from Redis was archived first (committed, then removed).
        gone = [_number(entry_id) for (entry_id, _), stored in zip(entries, states, strict=True)
                if not stored]
        cold = (self.archive.states(self.keys.application, gone)
                if gone and self.archive is not None else {})
        notifications = []
        for (entry_id, fields), stored in zip(entries, states, strict=True):
            originator, number = text(fields[b"o"]), _number(entry_id)
            state = stored[0][1][b"s"] if stored else cold.get(number)
            if state is None:
                raise CorruptEventError(
                    "notification's event is neither in Redis nor in the archive"
                    + ("" if self.archive is not None else " (no archive configured: set "
                       "ES_ARCHIVE_URL to read archived events)"),
                    key=self.keys.aggregate(self.purpose, originator),
                    entity_type=self.keys.application, entity_id=originator,
                    event_number=int(fields[b"v"]))
            notifications.append(Notification(
                id=number,
                originator_id=UUID(originator) if fields[b"u"] == b"1" else originator,
                originator_version=int(fields[b"v"]), topic=text(fields[b"t"]), state=state))
        return notifications

    def max_notification_id(self) -> int | None:
        with self.recording.reading():
            last = self.client.xrevrange(self.keys.notifications(), "+", "-", count=1)
        return _number(last[0][0]) if last else None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return RedisSubscription(self, gt=gt, topics=topics)


class RedisSubscription(ListenNotifySubscription[RedisApplicationRecorder]):
    """Notifications after `gt`, then each new one as it is recorded: a listener thread
    blocks on the log (XREAD) and wakes the puller when an entry comes."""

    def __init__(self, recorder: RedisApplicationRecorder, gt: int | None = None,
                 topics: Sequence[str] = ()) -> None:
        # Entries after the newest at start wake the puller; the puller's first pull reads
        # every one before it.
        self._seen = f"{recorder.max_notification_id() or 0}-0"
        self._listener = threading.Thread(target=self._listen, daemon=True,
                                          name="es-workers-eventsourcing-listener")
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._listener.start()

    def _listen(self) -> None:
        log, client = self._recorder.keys.notifications(), self._recorder.client
        try:
            while not self._has_been_stopped:
                if client.xread({log: self._seen}, count=1, block=LISTEN_BLOCK_MS):
                    # The newest entry, read before the puller is woken: it then reads it.
                    newest = client.xrevrange(log, "+", "-", count=1)
                    self._seen = text(newest[0][0])
                    self._has_been_notified.set()
        except BaseException as error:
            if self._thread_error is None:
                self._thread_error = error
            self.stop()

    def stop(self) -> None:
        super().stop()
        if self._listener.is_alive() and threading.current_thread() is not self._listener:
            self._listener.join()


class RedisTrackingRecorder(TrackingRecorder):
    """The notification ID processed per upstream application; a tracking record at or
    below the recorded one raises IntegrityError."""

    def __init__(self, client: Any, keys: ApplicationKeys, *,
                 durability: Durability | None = None,
                 archive: RecordedArchive | None = None) -> None:
        # `archive`: taken (the factory builds every recorder alike), not needed: tracking
        # records are never archived.
        self.client, self.keys = client, keys
        self._tracking = _Recording(client, keys, "events", logged=False,
                                    durability=durability)

    def insert_tracking(self, tracking: Tracking) -> None:
        self._tracking.record([], tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        with self._tracking.reading():
            found = self.client.hget(self.keys.tracking(), application_name)
        return None if found is None else int(found)


class RedisProcessRecorder(RedisTrackingRecorder, RedisApplicationRecorder, ProcessRecorder):
    """Events, their notifications and the tracking record of what was processed, in one
    atomic step (`insert_events(events, tracking=...)`)."""

    def __init__(self, client: Any, keys: ApplicationKeys, *,
                 durability: Durability | None = None,
                 archive: RecordedArchive | None = None) -> None:
        RedisApplicationRecorder.__init__(self, client, keys, durability=durability,
                                          archive=archive)
        RedisTrackingRecorder.__init__(self, client, keys, durability=durability)


def _number(entry_id: bytes | str) -> int:
    """The first part of a stream entry ID: a version, or a notification ID."""
    return int(text(entry_id).partition("-")[0])
