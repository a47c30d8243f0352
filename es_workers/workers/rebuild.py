"""Rebuilding a subscriber of Dramatiq workers while the app runs (`Store.rebuild`).

Clearing a read model and replaying its history while workers keep handling live events
races with them: a handler in flight writes into the cleared model, a live event lands
before the history it depends on. So a rebuild:

1. pauses the subscriber on every partition (begin.lua then begins none of its entities;
   their notices stay due), the pause expiring unless renewed, so a rebuild that dies
   does not hold the subscriber forever;
2. waits until no worker holds a lock of it (no handler of it runs), or gives up after
   `timeout` having changed nothing;
3. starts it over: forgets its checkpoints, failures, parked entities and catch-up, and
   marks every entity due (should it die from here on, the sweep hands the history over
   once the pause expires; a record of the rebuild stays for `es-workers status`);
4. calls the subscriber's reset hook, then checks the pause was held all along;
5. sends a notice for every entity and lifts the pause.

Workers then handle each entity's history from event 1, then what was written meanwhile,
in order per entity, as for a new subscriber. Other subscribers never notice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from ..errors import RebuildError
from ..ports import RebuildRecord, SubscriberEntity, SubscriberState, SubscriberStorage

log = logging.getLogger("es_workers.rebuild")

PAGE = 500  # entity IDs per page of the history handed over
POLL_S = 0.05  # how often the wait for running handlers looks again

NotifyMany = Callable[[str, Sequence[tuple[str, int | None]], Sequence[str]], None]


class Rebuild:
    """One rebuild of `subscriber_id` over its `entity_types` (see the module's doc)."""

    def __init__(self, storage: SubscriberStorage, notify_many: NotifyMany,
                 subscriber_id: str, entity_types: Sequence[str], pause_ms: int) -> None:
        self.storage = storage
        self.state = storage.subscriber_state()
        self.notify_many = notify_many
        self.subscriber_id = subscriber_id
        self.entity_types = list(entity_types)
        self.pause_ms = pause_ms
        self.by = f"{socket.gethostname()}:{os.getpid()}"
        self.token = f"{self.by}:{uuid.uuid4().hex[:8]}"
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def run(self, reset: Callable[[], None], timeout: float,
            progress: Callable[[int], None] | None = None) -> int:
        """Rebuilds; returns the entities handed over again. Raises RebuildError."""
        if not self.state.hold_pause(self.subscriber_id, self.token, self.pause_ms):
            holder = self.state.paused_by(self.subscriber_id) or "another process"
            raise RebuildError(
                f"subscriber {self.subscriber_id!r} is being rebuilt by {holder.rsplit(':', 1)[0]}"
                f": try again once it is done (the pause of a rebuild that died expires "
                f"within {self.pause_ms / 1000:g} s)"
            )
        keeper = _PauseKeeper(self.state, self.subscriber_id, self.token, self.pause_ms)
        keeper.start()
        started_over = done = False
        try:
            self._wait_idle(timeout)
            started_over = True
            self._start_over()
            self._reset(reset)
            sent = self._hand_over(progress)
            done = True
            return sent
        except RebuildError:
            raise
        except Exception as error:
            if not started_over:
                raise
            raise RebuildError(
                f"rebuilding {self.subscriber_id!r} failed after it was started over "
                f"({type(error).__name__}: {error}): its read model may be partly reset; "
                "run the rebuild again"
            ) from error
        finally:
            keeper.stop()
            self.state.lift_pause(self.subscriber_id, self.token)
            if done:
                self.state.clear_rebuild(self.subscriber_id)

    def _stage(self, stage: str) -> None:
        self.state.record_rebuild(RebuildRecord(self.subscriber_id, self.started_at, self.by,
                                                stage))
        log.info("rebuilding %s: %s", self.subscriber_id, stage,
                 extra={"subscriber_id": self.subscriber_id})

    def _wait_idle(self, timeout: float) -> None:
        """Waits until no lock of the subscriber is held. None can be taken while it is
        paused, so the locks found once are the only ones to wait for."""
        deadline = time.monotonic() + timeout
        running = self.state.locked(self.subscriber_id)
        while running:
            if time.monotonic() >= deadline:
                names = ", ".join(f"{e.entity_type} {e.entity_id!r}" for e in running[:5])
                raise RebuildError(
                    f"{len(running)} handlers of {self.subscriber_id!r} still running after "
                    f"{timeout:g} s ({names}{', ...' if len(running) > 5 else ''}); nothing "
                    "was reset and the subscriber runs on. Try again, with a longer timeout"
                )
            time.sleep(POLL_S)
            running = self.state.still_locked(running)

    def _start_over(self) -> None:
        self._stage("starting over")
        for entity_type in self.entity_types:
            self.state.start_over(self.subscriber_id, entity_type)
            for ids in self._pages(entity_type):
                self.state.mark_due(self._entities(entity_type, ids))

    def _reset(self, reset: Callable[[], None]) -> None:
        self._stage("reset hook")
        reset()
        if not self.state.renew_pause(self.subscriber_id, self.token, self.pause_ms):
            raise RebuildError(
                f"the pause of {self.subscriber_id!r} expired before its reset hook returned "
                f"(pause_ms={self.pause_ms}), so workers may have handled events meanwhile: "
                "run the rebuild again"
            )

    def _hand_over(self, progress: Callable[[int], None] | None) -> int:
        self._stage("replaying")
        sent = 0
        for entity_type in self.entity_types:
            for ids in self._pages(entity_type):
                self.notify_many(entity_type, [(entity_id, None) for entity_id in ids],
                                 [self.subscriber_id])
                sent += len(ids)
                if progress is not None:
                    progress(sent)
        return sent

    def _pages(self, entity_type: str) -> Iterator[list[str]]:
        token: str | None = None
        while True:
            ids, token = self.storage.entity_ids(entity_type, token, PAGE)
            yield ids
            if token is None:
                return

    def _entities(self, entity_type: str, ids: list[str]) -> list[SubscriberEntity]:
        return [self.state.entity(self.subscriber_id, entity_type, entity_id) for entity_id in ids]


class _PauseKeeper:
    """Renews the pause every third of its life while the rebuild runs (a thread)."""

    def __init__(self, state: SubscriberState, subscriber_id: str, token: str,
                 pause_ms: int) -> None:
        self.state, self.subscriber_id, self.token = state, subscriber_id, token
        self.pause_ms = pause_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="es-rebuild-pause",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.pause_ms / 3000):
            try:
                if not self.state.renew_pause(self.subscriber_id, self.token, self.pause_ms):
                    log.error("rebuilding %s: its pause expired; the rebuild will fail",
                              self.subscriber_id)
                    return
            except Exception as error:  # Redis down: the next renewal may get through
                log.warning("rebuilding %s: renewing its pause failed: %s",
                            self.subscriber_id, error)
