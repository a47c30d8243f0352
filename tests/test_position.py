"""Position: an ordered, frozen value with a text form for URLs and the command line."""

from __future__ import annotations

import pytest

from es_workers import Position


def test_a_position_reads_back_from_its_text_form() -> None:
    position = Position(3, 42)
    assert str(position) == "p3:42"
    assert Position.parse("p3:42") == position
    assert Position.parse(" p0:1 ") == Position(0, 1)


@pytest.mark.parametrize("text", ["", "3:42", "p3", "p-1:2", "p3:x", "p3:4:5", "P3:4"])
def test_text_that_is_not_a_position_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a position"):
        Position.parse(text)


def test_positions_order_by_partition_then_number_and_are_frozen() -> None:
    assert sorted([Position(1, 2), Position(0, 9), Position(0, 3)]) == [
        Position(0, 3), Position(0, 9), Position(1, 2)]
    with pytest.raises(AttributeError):
        Position(0, 1).number = 2  # type: ignore[misc]


def test_after_takes_one_position_or_one_per_partition() -> None:
    from es_workers.position import after_by_partition

    assert after_by_partition(None) == {}
    assert after_by_partition(Position(2, 5)) == {2: 5}
    assert after_by_partition([Position(0, 1), Position(3, 7)]) == {0: 1, 3: 7}
    assert after_by_partition({3: Position(3, 7)}) == {3: 7}
    assert after_by_partition([Position(0, 2), Position(0, 1)]) == {0: 2}  # the greatest
    with pytest.raises(ValueError, match=">= 0"):
        after_by_partition(Position(0, -1))
    with pytest.raises(TypeError):
        after_by_partition("p0:1")  # type: ignore[arg-type]
