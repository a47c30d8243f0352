"""What handing each subscriber a content of its own costs, against freezing contents.

    python bench/content_copy.py [--n 100000]

The in-memory bus hands each subscriber `own_copy(event)`: the content read back from its
JSON, as each subscriber on a Dramatiq bus reads its own from storage. Freezing the content
classes (pydantic `frozen=True`) would cost nothing per subscriber, but it does not stop a
handler from changing a list or dict inside a content, and it breaks user classes that set
fields (in a validator, or before writing). Prints µs per event for a flat and a nested
content: decoding it (what a read costs), decoding it frozen, and the copies.
"""

from __future__ import annotations

import argparse
import copy
import timeit
from datetime import UTC, datetime
from typing import Any

from pydantic import ConfigDict

from es_workers import Content, Event
from es_workers.event import own_copy


class Deposited(Content):
    amount: int


class Order(Content):
    order_id: str
    customer: str
    placed_at: datetime
    lines: list[dict[str, int]]
    note: str | None = None


class FrozenDeposited(Deposited):
    model_config = ConfigDict(frozen=True)


class FrozenOrder(Order):
    model_config = ConfigDict(frozen=True)


def per_call_us(call: Any, n: int) -> float:
    """Best of 5 rounds of `n` calls, in µs per call."""
    return min(timeit.repeat(call, number=n, repeat=5)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    n = parser.parse_args().n
    contents: list[tuple[str, Content, type[Content]]] = [
        ("flat (1 int)", Deposited(amount=5), FrozenDeposited),
        ("nested (4 fields, a list of 2 dicts)",
         Order(order_id="o-123", customer="ada lovelace", placed_at=datetime.now(UTC),
               lines=[{"sku": 1, "qty": 2}, {"sku": 3, "qty": 1}], note="leave at door"),
         FrozenOrder),
    ]
    for title, content, frozen in contents:
        print(title)
        for name, us in figures(content, frozen, n).items():
            print(f"  {name:28} {us:6.2f} µs")


def figures(content: Content, frozen: type[Content], n: int) -> dict[str, float]:
    data = content.model_dump_json()
    event = Event("e1", "t", 1, datetime.now(UTC), content, "id", "id")
    plain = type(content)
    return {
        "decode (a read)": per_call_us(lambda: plain.model_validate_json(data), n),
        "decode, frozen class": per_call_us(lambda: frozen.model_validate_json(data), n),
        "own_copy (per subscriber)": per_call_us(lambda: own_copy(event), n),
        "model_copy(deep=True)": per_call_us(lambda: content.model_copy(deep=True), n),
        "copy.deepcopy": per_call_us(lambda: copy.deepcopy(content), n),
    }


if __name__ == "__main__":
    main()
