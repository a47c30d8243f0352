"""Names users give: entity types, entity IDs, subscriber IDs. Checked once, here.

- entity type: a letter, then up to 99 letters, digits, `_`, `.` or `-` (it is part of
  Redis keys and never holds `:`, so `<type>:<id>` splits unambiguously);
- entity ID: any text of 1 to 200 characters without control characters (Unicode, spaces,
  `:` and braces are fine: keys hold it verbatim after the type, and the hash tag is the
  first `{...}` of a key, which is always the partition's);
- subscriber ID: a Dramatiq queue name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from .errors import ConfigurationError, InvalidNameError, SubscriberError, UnknownNameError

R = TypeVar("R", bound=Callable[[], object])

_ENTITY_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}")
# C0 and C1 control characters, DEL, and lone surrogates (they cannot be UTF-8 encoded).
_NOT_IN_ENTITY_ID = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_ENTITY_ID = 200
# What Dramatiq accepts as a queue name, kept short enough for Redis keys and metrics labels.
_SUBSCRIBER_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,79}")


SHOWN = 60  # characters of a refused name an error shows: a 10 KB name is not echoed whole


def shown(name: object) -> str:
    """`repr(name)`, cut to about SHOWN characters with its length said when longer."""
    text = repr(name)
    if len(text) <= SHOWN:
        return text
    size = f"{len(name)} characters" if isinstance(name, str) else f"{len(text)} characters"
    return f"{text[:SHOWN]}... ({size})"


def check_entity_type(entity_type: object) -> str:
    if not isinstance(entity_type, str) or not _ENTITY_TYPE.fullmatch(entity_type):
        raise InvalidNameError(
            f"invalid entity type {shown(entity_type)}: use a letter followed by up to 99 letters, "
            "digits, '_', '.' or '-'"
        )
    return entity_type


def check_entity_id(entity_id: object) -> str:
    if (
        not isinstance(entity_id, str)
        or not 1 <= len(entity_id) <= MAX_ENTITY_ID
        or _NOT_IN_ENTITY_ID.search(entity_id)
    ):
        raise InvalidNameError(
            f"invalid entity ID {shown(entity_id)}: use 1 to {MAX_ENTITY_ID} characters of text "
            "without control characters"
        )
    return entity_id


def check_subscriber_id(subscriber_id: object) -> str:
    if not isinstance(subscriber_id, str) or not _SUBSCRIBER_ID.fullmatch(subscriber_id):
        raise SubscriberError(
            f"invalid subscriber ID {shown(subscriber_id)}: it names a Dramatiq queue, so use a "
            "letter or '_' followed by up to 79 letters, digits, '_' or '-'"
        )
    return subscriber_id


def subscribers_to_wait_for(
    entity_type: str, entity_id: str, known: list[str], wanted: Sequence[str] | None
) -> list[str]:
    """`wait_for`'s subscribers: `wanted`, or every `known` one when None; an unknown one is
    a SubscriberError naming the known ones."""
    check_entity_type(entity_type)
    check_entity_id(entity_id)
    chosen = known if wanted is None else list(wanted)
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise SubscriberError(
            f"no subscriber {', '.join(map(repr, unknown))} for {entity_type!r}; "
            f"known: {', '.join(known) or 'none'}"
        )
    return chosen


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like `name` (a likely typo of it), or None when none is close."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def check_subscribed_type(entity_type: str, registered: Sequence[str]) -> None:
    """A subscription must name an entity type the store has events for: a typo would
    otherwise subscribe a handler that never runs. UnknownNameError names the known types
    and the closest one."""
    check_entity_type(entity_type)
    if entity_type in registered:
        return
    near = closest(entity_type, registered)
    hint = f"; did you mean {near!r}?" if near else ""
    known = ", ".join(repr(name) for name in sorted(registered)) or "none"
    raise UnknownNameError(
        f"cannot subscribe to entity type {entity_type!r}: the store has no events "
        f"registered for it{hint} (known entity types: {known}; register its Content "
        f"classes first: Store(events={{{entity_type!r}: [...]}}))"
    )


def one_reset_hook(subscriber_id: str, declared: R | None, reset: R) -> R:
    """The subscriber's reset hook: it has one, so declaring another is a SubscriberError
    (declaring the same one again, e.g. with each of its entity types, is fine)."""
    if not callable(reset):
        raise SubscriberError(f"the reset hook of {subscriber_id!r} must be callable, not "
                              f"{reset!r}")
    if declared is not None and declared != reset:
        raise SubscriberError(
            f"subscriber {subscriber_id!r} already has a reset hook ({declared!r}); a "
            "subscriber has one, which clears all its read model"
        )
    return reset


def check_rebuildable(subscriber_id: str, known: Sequence[str], reset: R | None) -> R:
    """The subscriber's reset hook. What `rebuild` refuses: a subscriber the app does not
    have (UnknownNameError naming those it has) or one without a reset hook
    (ConfigurationError)."""
    if subscriber_id not in known:
        listed = ", ".join(repr(name) for name in sorted(known)) or "none"
        raise UnknownNameError(f"subscriber {subscriber_id!r} is not registered in this app: "
                               f"known subscribers {listed}")
    if reset is None:
        raise ConfigurationError(
            f"subscriber {subscriber_id!r} has no reset hook, so it cannot be rebuilt: "
            f"declare one that clears its read model, @store.subscribe(ENTITY_TYPE, "
            f"{subscriber_id!r}, reset=clear_it)"
        )
    return reset
