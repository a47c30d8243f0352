"""The argument layout of each Lua script beside this module, declared once: which KEYS and
ARGV it takes, in which order. The Python side builds every script's KEYS and ARGV through
its layout (`pack`), and each `<name>.lua` carries the layout in its header (`-- layout
KEYS: ...`), which tests/test_script_layouts.py checks against the KEYS[...] and ARGV[...]
the script reads: a name or position changed on one side only fails that test.

A part (KEYS or ARGV) is fixed names, then optionally a group of names repeated per item
(an entity, an event), then tail names; the last `optional` tail names may be left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Part:
    """The KEYS or the ARGV of a script."""

    fixed: tuple[str, ...] = ()
    each: tuple[str, ...] = ()
    """Repeated per item, after `fixed`."""
    tail: tuple[str, ...] = ()
    """After the items."""
    optional: int = 0
    """How many of the tail's last names may be left out."""

    def index(self, name: str) -> int:
        """The 0-based position of a fixed name (or, without items, a tail name)."""
        names = self.fixed + (() if self.each else self.tail)
        if name not in names:
            raise KeyError(f"{name!r} is not a fixed name of {self.render()}")
        return names.index(name)

    @property
    def required(self) -> int:
        """How many fixed names there are, with the tail's required ones (without items)."""
        return len(self.fixed) + len(self.tail) - self.optional

    def pack(self, items: Sequence[Sequence[Any]] = (), /, **named: Any) -> list[Any]:
        """The values in the declared order: the fixed names' from `named`, each item's
        values in the order of `each`, then the tail names' (an optional one may be left
        out, the last ones first). ValueError naming what is missing, extra or misshapen.
        (It runs on every append: the checks are counts, the message is built on failure.)"""
        try:
            values = [named[name] for name in self.fixed]
        except KeyError:
            raise self._refused(items, named) from None
        width = len(self.each)
        for item in items:
            if len(item) != width:
                raise self._refused(items, named)
            values += item
        given = len(self.fixed)
        for name in self.tail:
            if name not in named:
                break
            values.append(named[name])
            given += 1
        if given != len(named) or given < len(self.fixed) + len(self.tail) - self.optional:
            raise self._refused(items, named)
        return values

    def _refused(self, items: Sequence[Sequence[Any]], named: dict[str, Any]) -> ValueError:
        missing = [name for name in self.fixed if name not in named]
        extra = sorted(set(named) - set(self.fixed) - set(self.tail))
        if missing or extra:
            return ValueError(f"{self.render()}: missing {missing}, unknown {extra}")
        if any(len(item) != len(self.each) for item in items):
            return ValueError(f"{self.render()}: an item holds {list(self.each)}" if self.each
                              else f"{self.render()} takes no items")
        required = list(self.tail[:len(self.tail) - self.optional])
        return ValueError(f"{self.render()}: the tail needs {required}, in order, an "
                          "optional name only after those before it; got "
                          f"{[name for name in self.tail if name in named]}")

    def render(self) -> str:
        """The layout as the scripts' headers give it: `a b (c d)* e [f]`."""
        words = list(self.fixed)
        if self.each:
            words.append("(" + " ".join(self.each) + ")*")
        required = len(self.tail) - self.optional
        words += self.tail[:required]
        words += (f"[{name}]" for name in self.tail[required:])
        return " ".join(words)


@dataclass(frozen=True)
class Layout:
    """A script's KEYS and ARGV. In the script, the variable `i` counts items from
    `item_base` and `count` is the number of items."""

    script: str
    keys: Part
    args: Part
    item_base: int = 0

    def header(self) -> list[str]:
        """The lines of `<script>.lua`'s header that declare this layout."""
        return [f"-- layout KEYS: {self.keys.render()}",
                f"-- layout ARGV: {self.args.render()}",
                f"-- layout items: i from {self.item_base}"]


APPEND = Layout(
    "append",
    Part(("stream", "heads", "index", "outbox", "scratch", "truncated"), tail=("log",),
         optional=1),
    Part(("entity_type", "entity_id", "expected", "count"),
         each=("name", "data", "time", "store_event_id", "metadata"), tail=("wake",),
         optional=1),
)
ARCHIVED = Layout("archived", Part(("archived",)), Part(each=("id", "number", "first_id")))
BEGIN = Layout(
    "begin",
    Part(("checkpoints", "parked", "heads", "retry_at", "failures"), each=("lock", "stream"),
         tail=("missed", "truncated", "paused", "resent", "started")),
    Part(("token", "lock_ms", "page"), each=("id", "target")),
)
CHECKPOINT = Layout(
    "checkpoint",
    Part(("checkpoints", "heads", "due", "failures", "retry_at"), each=("lock",)),
    Part(("token", "lock_ms"), each=("id", "number", "member", "channel", "release")),
)
FAIL = Layout(
    "fail",
    Part(("failures", "retry_at", "parked", "due", "lock")),
    Part(("token", "id", "member", "channel", "max_attempts", "backoff_ms", "record")),
)
KEYRING = Layout(
    "keyring",
    Part(("data", "subjects", "forgotten", "version")),
    Part(("op", "subject_or_key_id"), tail=("key_id_or_old", "wrapped_or_new"), optional=2),
)
PAUSE = Layout("pause", Part(("paused",)), Part(("token", "action"), tail=("ms",), optional=1))
RECORD = Layout(
    "record",
    Part(("log", "tracking"), each=("stream",)),
    Part(("logged", "upstream", "tracked", "count", "write_token"),
         each=("version", "topic", "state", "originator", "uuid")),
    item_base=1,
)
RECORDED_ARCHIVED = Layout("recorded_archived", Part(("marks",), each=("stream",)),
                           Part(each=("originator", "version")), item_base=1)
RECORDED_LOG_ARCHIVED = Layout("recorded_log_archived", Part(("log", "mark")),
                               Part(("upto",)))
RENEW = Layout("renew", Part(each=("lock",)), Part(("token", "lock_ms")))
SNAPSHOT = Layout(
    "snapshot",
    Part(("stream", "heads", "snapshots", "truncated")),
    Part(("id", "name", "version", "number", "data")),
)
REMOVE = Layout(
    "remove",
    Part(("stream", "heads", "index", "truncated", "snapshots")),
    Part(("id", "mark")),
)
TRUNCATE = Layout("truncate", Part(("stream", "heads", "truncated")), Part(("id", "kept")))
UNLOCK = Layout("unlock", Part(each=("lock",)), Part(("token",)))

LAYOUTS = {layout.script: layout for layout in (
    APPEND, ARCHIVED, BEGIN, CHECKPOINT, FAIL, KEYRING, PAUSE, RECORD, RECORDED_ARCHIVED,
    RECORDED_LOG_ARCHIVED, REMOVE, RENEW, SNAPSHOT, TRUNCATE, UNLOCK)}
"""Every script's layout, by script name."""
