"""Test helpers shipped with the library (the Go package's HydrateState and VerifyEvents).

Pytest fixtures live in `es_workers.pytest_plugin`, loaded automatically by pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from .event import Content, Event, as_callable
from .ids import new_ids

T = TypeVar("T")


def hydrate_state(
    state: T, *contents: Content, entity_type: str = "test", entity_id: str = "1"
) -> T:
    """Feeds the contents, as events numbered 1.., to `state` (callable or `.handle`)."""
    handle = as_callable(state)  # type: ignore[arg-type]
    store_event_ids = new_ids(max(1, len(contents)))
    now = datetime.now(UTC)
    for number, content in enumerate(contents, start=1):
        store_event_id = store_event_ids[number - 1]
        handle(
            Event(
                entity_id=entity_id,
                entity_type=entity_type,
                event_number=number,
                event_time=now,
                content=content,
                store_event_id=store_event_id,
                store_entity_id=store_event_ids[0],
            )
        )
    return state


Expected = Content | Callable[[Content], bool]


def verify_events(contents: Sequence[Content | Event], *expected: Expected) -> bool:
    """Asserts that `contents` match `expected` one to one, in order.

    An expected item is a Content (compared with ==) or a predicate on the content.
    Raises AssertionError with a line per position on a mismatch.
    """
    actual = [item.content if isinstance(item, Event) else item for item in contents]
    lines: list[str] = []
    failed = len(actual) != len(expected)
    for index in range(max(len(actual), len(expected))):
        got: Any = actual[index] if index < len(actual) else "<missing>"
        want: Any = expected[index] if index < len(expected) else "<none expected>"
        if index >= len(actual) or index >= len(expected):
            ok = False
        elif isinstance(want, Content):
            ok = got == want
        else:
            ok = bool(want(got))
        failed = failed or not ok
        shown = (
            want
            if isinstance(want, Content | str)
            else f"a content for which {_name(want)} is true"
        )
        lines.append(f"{'  ' if ok else '✗ '}[{index}] got {_show(got)}, want {_show(shown)}")
    if failed:
        raise AssertionError(
            f"events differ (got {len(actual)}, want {len(expected)}):\n" + "\n".join(lines)
        )
    return True


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))


def _show(value: Any) -> str:
    if isinstance(value, Content):
        return f"{type(value).__name__}({value.model_dump_json()})"
    return str(value)
