"""The publisher: relays each partition's outbox to the bus, at least once.

Every append also adds an entry to its partition's outbox (same Lua script), so nothing is
stored without being queued. The publisher reads the outboxes through one consumer group,
sends the bus a notice per (entity, subscriber), and only then acknowledges and deletes
the entries (on a single Redis on the pipeline of its next read). A publisher killed in
between leaves its entries pending in the group; any publisher claims them after
`claim_idle_ms` and sends them again (duplicates are skipped by the subscribers'
checkpoints). While the bus or Redis is down it retries with
exponential backoff and jitter. Several publishers may run at once.

It also runs two slower duties:
- catch-up: a subscriber the entity type has never seen is sent a notice for every entity
  of the type (paging through `entity_ids`), so it receives the whole history first;
- sweep: notices sent but not seen handled within `redrive_after_ms` (a worker was killed
  with them prefetched) are sent again if the subscriber still lags, with a backoff, and
  not while they wait in the queue (no worker beat lately, or none began a delivery of
  the subscriber since they were re-sent): while no worker runs, the queue does not grow
  with re-sends.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from .. import metrics
from ..backoff import Backoff
from ..ports import Bus, EventBus, NotifyingEventBus, Storage, SubscriberEntity
from ..retention import Scavenged
from ..tracing import relay_span
from ..upgrade import Reader
from .cluster import Wakeups, is_cluster, read_groups, spread_warning
from .heartbeats import BEAT_EVERY_S, Heartbeats
from .keys import RedisKeys, text
from .state import SubscriberState

log = logging.getLogger("es_workers.publisher")

GROUP = "publishers"
FORGET_EVERY_S = 60.0  # how often to drop dead publishers from the group
WORKER_GONE_S = 3 * BEAT_EVERY_S  # no worker beat for this long: none runs


@dataclass(frozen=True)
class PublisherOptions:
    batch: int = 200  # outbox entries read per partition per call
    block_ms: int = 500  # how long one read waits for new entries (real Redis)
    claim_idle_ms: int = 10_000  # entries pending this long belong to a dead publisher
    claim_every_ms: int = 2_000
    sweep_every_ms: int = 1_000
    catch_up_page: int = 500
    min_backoff_ms: int = 50
    max_backoff_ms: int = 5_000
    redrive_after_ms: int = 10_000  # a notice not seen handled by then is sent again
    log_keep: int | None = None  # log entries kept per partition (None: all); see trim_logs
    log_keep_for_ms: int | None = None  # and those this young (None: by count alone)
    trim_every_ms: int = 10_000
    scavenge_interval_ms: int | None = None  # how often to scavenge (None: never)


class OutboxStorage(Storage, Protocol):
    """What the publisher needs of its storage (RedisStorage is one)."""

    client: Any
    keys: RedisKeys
    state: SubscriberState
    heartbeats: Heartbeats

    def outbox_backlog(self) -> int: ...

    def scavenge(self, subscribers: Mapping[str, Sequence[str]]) -> Scavenged: ...

    def trim_logs(self, keep: int | None = None, keep_for_ms: int | None = None) -> int: ...


@dataclass(frozen=True)
class _Notice:
    entity_type: str
    entity_id: str
    first: int
    last: int
    partition: int


class Publisher:
    """Relays the outboxes of `storage` to `bus` (see the module's doc).

    A bus that takes events is handed them through `reader` (with the store's upgrades;
    `Store.start()` passes its own), a notifying bus only notices. `logger`: where its
    records go (`Store.start()` passes the store's); by default `es_workers.publisher`.
    """

    def __init__(
        self,
        storage: OutboxStorage,
        bus: Bus,
        options: PublisherOptions | None = None,
        *,
        reader: Reader | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.log = logger or log
        self.storage = storage
        self.client = storage.client
        self.keys = storage.keys
        self.state = storage.state
        self.bus = bus
        # The bus checked once: isinstance against a runtime-checkable Protocol costs
        # microseconds, and rounds asked it per notice (~10% of a busy publisher's CPU).
        self._notifier = bus if isinstance(bus, NotifyingEventBus) else None
        self.reader = reader or Reader(storage.read, {})
        self.options = options or PublisherOptions()
        self._backoff = Backoff(self.options.min_backoff_ms, self.options.max_backoff_ms)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._outboxes = [self.keys.outbox(p) for p in range(self.keys.partitions)]
        self._partition_of = {key: p for p, key in enumerate(self._outboxes)}
        self._own_pending = True  # after a start or an error, re-read what we hold first
        self._next_claim = 0.0
        self._next_sweep = 0.0
        self._next_trim = 0.0
        self._next_scavenge = 0.0
        self._next_forget = time.monotonic() + FORGET_EVERY_S
        self._next_beat = 0.0
        self._caught_up: set[tuple[str, str]] = set()
        # subscriber ID -> (since when, deliveries begun then): its notices wait in its queue
        self._stalled: dict[str, tuple[float, int]] = {}
        # On a cluster one XREADGROUP cannot span the outboxes (their slots differ): a round
        # reads, without blocking, the outboxes whose partition sent a wake-up (see
        # append.lua) or had entries last round, and every outbox each block_ms; an idle
        # publisher waits for a wake-up.
        self._wakeups = (
            Wakeups(self.client, [self.keys.wake(p) for p in range(self.keys.partitions)],
                    logger=self.log)
            if is_cluster(self.client) else None
        )
        self._outbox_of_wake = {
            self.keys.wake(p): key for p, key in enumerate(self._outboxes)
        }
        self._had_entries: set[str] = set()
        self._next_full_read = 0.0
        # What the last round relayed, to record (mark_due) and acknowledge (XACK + XDEL)
        # on the pipeline of the next read: its notices are enqueued by then (see _send).
        self._unacked: list[tuple[list[SubscriberEntity], dict[str, list[str]]]] = []

    def run(self, stop: threading.Event) -> None:
        """Relays until `stop` is set. Errors are logged and retried, never raised: one
        warning per retry, and one "recovered" line when a round succeeds again."""
        self.log.info("publisher %s started on %d partitions", self.consumer, len(self._outboxes))
        if self._wakeups is not None:
            self._wakeups.start()
        try:
            self._run(stop)
        finally:
            if self._wakeups is not None:
                self._wakeups.stop()
            self._flush_acks()
            self._stop_beating()
        self.log.info("publisher %s stopped", self.consumer)

    def _run(self, stop: threading.Event) -> None:
        failures = idle = 0
        outage_since = 0.0
        spread_checked = False
        while not stop.is_set():
            try:
                if failures or self._own_pending:
                    self.ensure_groups()
                if not spread_checked:
                    warning = spread_warning(self.client, self.keys)
                    if warning:
                        self.log.warning("publisher %s: %s", self.consumer, warning)
                    spread_checked = True
                busy = self.step()
                if failures:
                    self.log.info("publisher %s recovered after %.1f s (%d failed attempts)",
                             self.consumer, time.monotonic() - outage_since, failures)
                failures = 0
                idle = 0 if busy else idle + 1
                if idle and self._wakeups is not None:
                    self._wakeups.wait(stop, self.options.block_ms / 1000)
                elif idle:
                    # Real Redis blocks in XREADGROUP; fakeredis answers at once, so back
                    # off (1 ms doubling to 32 ms) rather than spin.
                    stop.wait(0.001 * 2 ** min(idle - 1, 5))
            except Exception as error:
                failures += 1
                outage_since = outage_since if failures > 1 else time.monotonic()
                stop.wait(self._retry_delay(error, failures) / 1000)

    def _retry_delay(self, error: Exception, failures: int) -> int:
        self._own_pending = True
        delay = self._backoff.delay_ms(failures)
        self.log.warning(
            "publisher %s: %s: %s; retrying in %.0f ms (attempt %d)",
            self.consumer, type(error).__name__, error, delay, failures,
        )
        return delay

    def _stop_beating(self) -> None:
        try:
            self.storage.heartbeats.stop("publisher")
        except Exception as error:  # Redis down: the beat goes stale instead
            self.log.debug("removing the publisher's heartbeat failed: %s", error)

    def _scavenge(self) -> None:
        """Removes what truncations and retention limits allow (`RedisStorage.scavenge`):
        never an event this app's subscribers, or any recorded under the prefix, have not
        handled."""
        notifier = self._notifier
        done = self.storage.scavenge({
            entity_type: notifier.subscriber_ids(entity_type) if notifier else []
            for entity_type in self.storage.entity_types()})
        if done.events:
            self.log.info("publisher %s scavenged %d events (%d bytes) of %d entities",
                          self.consumer, done.events, done.bytes, done.entities)

    def step(self) -> bool:
        """One round: relay new (or own pending) entries, then the periodic duties."""
        now = time.monotonic()
        busy = self._relay_outbox()
        if now >= self._next_claim:
            busy = self._claim_abandoned() or busy
            self._next_claim = now + self.options.claim_every_ms / 1000
        if now >= self._next_forget:
            self._forget_dead_consumers()
            self._next_forget = now + FORGET_EVERY_S
        keep, keep_for_ms = self.options.log_keep, self.options.log_keep_for_ms
        if (keep is not None or keep_for_ms is not None) and now >= self._next_trim:
            # Trimming never removes what a named follower has not done (trim_logs).
            self.storage.trim_logs(keep, keep_for_ms)
            self._next_trim = now + self.options.trim_every_ms / 1000
        if self.options.scavenge_interval_ms is not None and now >= self._next_scavenge:
            self._scavenge()
            self._next_scavenge = now + self.options.scavenge_interval_ms / 1000
        if now >= self._next_beat:  # beats only while rounds complete: a stuck loop goes stale
            self.storage.heartbeats.beat("publisher")
            self._next_beat = now + BEAT_EVERY_S
        if self._notifier is not None:
            busy = self.hand_over_history() or busy
            if now >= self._next_sweep:
                self.sweep()
                self._next_sweep = now + self.options.sweep_every_ms / 1000
        return busy

    def ensure_groups(self) -> None:
        """Creates the consumer group on each outbox (done by `run` at start)."""
        for key in self._outboxes:
            try:
                self.client.xgroup_create(key, GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def _relay_outbox(self) -> bool:
        entries = self._read_outboxes("0" if self._own_pending else ">")
        if self._own_pending and not entries:
            self._own_pending = False
            self._next_full_read = 0.0  # then new entries, of any partition
        if not entries:
            return False
        self._relay(entries)
        return True

    def _read_outboxes(self, start: str) -> list[tuple[str, Any]]:
        """New entries (start ">") or our own pending ones ("0") of every outbox."""
        count = self.options.batch
        if self._wakeups is None:
            block = None if start == "0" else self.options.block_ms
            streams = dict.fromkeys(self._outboxes, start)
            # The last round's acknowledgements go on the same pipeline, ahead of the read
            # (the server runs them first, even while the read blocks): a round trip saved.
            pipe = self.client.pipeline(transaction=False)
            self._queue_acks(pipe)
            pipe.xreadgroup(GROUP, self.consumer, streams, count=count, block=block)
            reply: Any = pipe.execute()[-1]
            self._unacked.clear()
        else:
            outboxes = self._outboxes_to_read(self._wakeups.take(), full=start == "0")
            reply = read_groups(self.client, GROUP, self.consumer, outboxes, start, count)
            self._had_entries = {text(key) for key, items in reply if items}
        return [(text(key), entry) for key, items in reply or [] for entry in items]

    def _outboxes_to_read(self, spoke: set[str] | None, *, full: bool) -> list[str]:
        """On a cluster: the outboxes a round reads (see __init__)."""
        now = time.monotonic()
        if full or spoke is None or now >= self._next_full_read:
            self._next_full_read = now + self.options.block_ms / 1000
            return self._outboxes
        wanted = {self._outbox_of_wake[c] for c in spoke if c in self._outbox_of_wake}
        wanted |= self._had_entries
        return [key for key in self._outboxes if key in wanted]

    def _claim_abandoned(self) -> bool:
        found = False
        for key in self._outboxes:
            reply = self.client.xautoclaim(
                key, GROUP, self.consumer, self.options.claim_idle_ms, "0-0",
                count=self.options.batch,
            )
            entries = [(key, entry) for entry in reply[1] if entry and entry[1]]
            if entries:
                self.log.info("publisher %s claimed %d abandoned entries of %s",
                         self.consumer, len(entries), key)
                self._relay(entries)
                found = True
        return found

    def _forget_dead_consumers(self) -> None:
        """Removes from the group the consumers of publishers that died (each start makes a
        new one). Only those holding nothing and silent for long: their entries were
        claimed, and a live publisher reads every `block_ms`, so it is never one of them
        (were it, its next read would simply add it again)."""
        silent_ms = 10 * self.options.claim_idle_ms
        for key in self._outboxes:
            for consumer in self.client.xinfo_consumers(key, GROUP):
                name = text(consumer["name"])
                if name != self.consumer and consumer["pending"] == 0 and (
                    consumer["idle"] > silent_ms
                ):
                    self.client.xgroup_delconsumer(key, GROUP, name)
                    self.log.info("publisher %s forgot dead publisher %s on %s",
                             self.consumer, name, key)

    def _relay(self, entries: Sequence[tuple[str, Any]]) -> None:
        """Sends one notice per entity (the highest event number wins), then acks; in a
        span `relay` when tracing."""
        with relay_span(len(entries)) as relaying:
            notices = self._notices(entries)
            relaying.entity_types({notice.entity_type for notice in notices.values()})
            self._send(entries, notices)

    def _notices(self, entries: Sequence[tuple[str, Any]]) -> dict[tuple[str, str], _Notice]:
        notices: dict[tuple[str, str], _Notice] = {}
        now_ms = time.time() * 1000
        for key, (entry_id, raw) in entries:
            fields = {text(k): text(v) for k, v in raw.items()}
            try:
                entity_type, entity_id = fields["type"], fields["id"]
                first, last = int(fields["first"]), int(fields["last"])
            except (KeyError, ValueError):
                self.log.error("outbox %s entry %s is malformed, dropping it: %r",
                          key, text(entry_id), fields)
                continue
            metrics.publish_lag().observe(
                max(0.0, now_ms - int(text(entry_id).split("-")[0])) / 1000
            )
            metrics.PUBLISHED.labels(entity_type).inc()
            known = notices.get((entity_type, entity_id))
            notices[(entity_type, entity_id)] = _Notice(
                entity_type, entity_id,
                min(first, known.first) if known else first,
                max(last, known.last) if known else last,
                self._partition_of[key],
            )
        return notices

    def _send(self, entries: Sequence[tuple[str, Any]],
              notices: dict[tuple[str, str], _Notice]) -> None:
        due = []
        by_type: dict[str, list[tuple[str, int | None]]] = {}
        notifier = self._notifier
        for notice in notices.values():
            if notifier is not None:
                due += [
                    self.state.entity(subscriber_id, notice.entity_type, notice.entity_id)
                    for subscriber_id in notifier.subscriber_ids(notice.entity_type)
                ]
                by_type.setdefault(notice.entity_type, []).append((notice.entity_id, notice.last))
            else:
                self._write_events(notice)
        for entity_type, positions in by_type.items():
            assert notifier is not None
            notifier.notify_many(entity_type, positions)
        by_key: dict[str, list[str]] = {}
        for key, (entry_id, _) in entries:
            by_key.setdefault(key, []).append(text(entry_id))
        # Only now, the notices enqueued, may the entries go (at least once): on a single
        # Redis with the next read (_read_outboxes), on a cluster at once.
        self._unacked.append((due, by_key))
        if self._wakeups is not None:
            self._flush_acks()

    def _queue_acks(self, pipe: Any) -> None:
        """Puts on `pipe` what relayed rounds left to record: their entities due (sent, to be
        seen handled), their outbox entries acknowledged and deleted."""
        for due, by_key in self._unacked:
            self.state.mark_due(due, pipe)
            for key, ids in by_key.items():
                pipe.xack(key, GROUP, *ids)
                pipe.xdel(key, *ids)

    def _flush_acks(self) -> None:
        """Records and acknowledges what relayed rounds left, now (a cluster after each
        round; any publisher as it stops). A failure leaves them to be read again
        (duplicates, which subscribers skip) by this publisher or, once it is gone, by
        another's claim."""
        if not self._unacked:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            self._queue_acks(pipe)
            pipe.execute()
        except redis.RedisError as error:
            if self._wakeups is not None:
                raise  # the run loop retries the round
            self.log.warning("publisher %s: acknowledging its last round failed: %s",
                             self.consumer, error)
            return
        self._unacked.clear()

    def _write_events(self, notice: _Notice) -> None:
        assert isinstance(self.bus, EventBus)  # not a NotifyingEventBus
        try:
            events = self.reader.read_range(
                notice.entity_type, notice.entity_id, notice.first, notice.last
            )
            self.bus.write(notice.entity_type, events)
        except Exception:
            # A bus that takes events (InMemoryEventBus) has no retry of its own, and an
            # unreadable event must not stall the others: report and go on, as the Go
            # library does.
            self.log.exception("publishing %s %r events %d..%d failed", notice.entity_type,
                          notice.entity_id, notice.first, notice.last,
                          extra={"entity_type": notice.entity_type,
                                 "entity_id": notice.entity_id, "event_number": notice.first})

    def hand_over_history(self) -> bool:
        """Hands one page of history to each subscriber that has not had it yet (catch-up).
        Returns whether there was any to hand over. The cursor survives a restart."""
        notifier = self._notifier
        assert notifier is not None
        busy = False
        for entity_type in self.storage.entity_types():
            for subscriber_id in notifier.subscriber_ids(entity_type):
                if (entity_type, subscriber_id) in self._caught_up:
                    continue
                if self.state.is_caught_up(entity_type, subscriber_id):
                    self._caught_up.add((entity_type, subscriber_id))
                    continue
                cursor = self.state.catch_up_cursor(entity_type, subscriber_id)
                ids, token = self.storage.entity_ids(
                    entity_type, cursor, self.options.catch_up_page
                )
                self.state.mark_due(
                    self.state.entity(subscriber_id, entity_type, entity_id) for entity_id in ids
                )
                notifier.notify_many(entity_type, [(entity_id, None) for entity_id in ids],
                                     [subscriber_id])
                if token is None:
                    self.state.finish_catch_up(entity_type, subscriber_id)
                    self._caught_up.add((entity_type, subscriber_id))
                    self.log.info("subscriber %s was handed the history of %s", subscriber_id,
                             entity_type, extra={"subscriber_id": subscriber_id,
                                                 "entity_type": entity_type})
                else:
                    self.state.save_catch_up_cursor(entity_type, subscriber_id, token)
                busy = True
        return busy

    def sweep(self) -> None:
        """Re-sends notices that are due and whose subscriber still lags the entity, unless
        they wait in the queue (`SubscriberState.take_due`). Logs one line per subscriber
        and round that re-sends, one when its notices start waiting (no worker takes its
        queue) and one when its queue moves again, never one per entity."""
        assert isinstance(self.bus, NotifyingEventBus)
        subscribed = {
            (t, s) for t in self.storage.entity_types() for s in self.bus.subscriber_ids(t)
        }
        subscriber_ids = sorted({s for _, s in subscribed})
        if subscriber_ids:
            found = self.state.take_due(subscriber_ids, subscribed,
                                        workers_alive=self._workers_alive())
            for subscriber_id, entities in _by_subscriber(found.resend).items():
                self._resend(subscriber_id, entities)
            self._watch_queues(_by_subscriber(found.waiting))
        metrics.outbox_backlog().set(self.storage.outbox_backlog())

    def _workers_alive(self) -> bool:
        """Whether a worker process beat lately (a killed one stops within WORKER_GONE_S)."""
        now_ms = int(time.time() * 1000)
        return any(b.role == "worker" and b.age_s(now_ms) < WORKER_GONE_S
                   for b in self.storage.heartbeats.read())

    def _resend(self, subscriber_id: str, entities: Sequence[SubscriberEntity]) -> None:
        first = entities[0]
        # While its queue stands still (a warning said so) re-sends are no news.
        level = logging.DEBUG if subscriber_id in self._stalled else logging.INFO
        self.log.log(
            level, "re-sending %d notices to %s not seen handled in time (first: %s %r)",
            len(entities), subscriber_id, first.entity_type, first.entity_id,
            extra={"subscriber_id": subscriber_id, "entity_type": first.entity_type,
                   "entity_id": first.entity_id},
        )
        by_type: dict[str, list[tuple[str, int | None]]] = {}
        for e in entities:
            by_type.setdefault(e.entity_type, []).append((e.entity_id, None))
        assert isinstance(self.bus, NotifyingEventBus)
        for entity_type, positions in by_type.items():
            self.bus.notify_many(entity_type, positions, [subscriber_id])

    def _watch_queues(self, waiting: Mapping[str, Sequence[SubscriberEntity]]) -> None:
        """One warning when a subscriber's notices start waiting in its queue, one line
        when deliveries of it begin again (the outage is over)."""
        for subscriber_id, entities in waiting.items():
            if subscriber_id not in self._stalled:
                begun = self.state.deliveries_begun(subscriber_id)
                self._stalled[subscriber_id] = (time.monotonic(), begun)
                first = entities[0]
                self.log.warning(
                    "subscriber %s: %d notices wait in its queue and no worker takes them "
                    "(first: %s %r); not sending them again until a worker runs and its "
                    "queue moves", subscriber_id, self.state.due_count(subscriber_id),
                    first.entity_type, first.entity_id,
                    extra={"subscriber_id": subscriber_id},
                )
        for subscriber_id, (since, begun) in list(self._stalled.items()):
            if self.state.deliveries_begun(subscriber_id) != begun:
                del self._stalled[subscriber_id]
                self.log.info("subscriber %s: workers take its notices again after %.0f s",
                              subscriber_id, time.monotonic() - since,
                              extra={"subscriber_id": subscriber_id})


def _by_subscriber(entities: Sequence[SubscriberEntity]) -> dict[str, list[SubscriberEntity]]:
    grouped: dict[str, list[SubscriberEntity]] = {}
    for e in entities:
        grouped.setdefault(e.subscriber_id, []).append(e)
    return grouped
