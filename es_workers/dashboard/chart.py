"""Handled events per second per subscriber, as the lines of an inline SVG chart."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sampler import Rate, SubscriberKey

WIDTH = 640
HEIGHT = 160
LABEL_CHAR_WIDTH = 7  # px per character of an 11 px axis label, a little over a digit's
COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
           "#db2777"]


@dataclass(frozen=True)
class Line:
    label: str  # "entity type / subscriber ID"
    colour: str
    points: str  # the SVG polyline's points
    last: float  # the latest rate, events per second


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: float  # events per second at the top of the chart
    minutes: float  # the window shown
    lines: list[Line]

    @property
    def top_label(self) -> str:
        return f"{rate_text(self.top)}/s"

    @property
    def middle_label(self) -> str:
        return rate_text(self.top / 2)

    @property
    def left(self) -> int:
        """Room left of the plot for the y-axis labels (right-aligned to it), so the
        longest is never cut off by the SVG's edge."""
        longest = max(len(self.top_label), len(self.middle_label))
        return 10 + LABEL_CHAR_WIDTH * longest


def nice_top(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at or above `value` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1.0, 2.0, 5.0, 10.0) if step * power >= value)


def rate_text(value: float) -> str:
    """An axis value, short: 0.5, 20, 500, 2k, 50k."""
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def chart(rates: dict[SubscriberKey, list[Rate]], *, now: float, window: float) -> Chart:
    top = nice_top(max((r.per_second for series in rates.values() for r in series), default=0))
    start = now - window
    lines = []
    for index, ((entity_type, subscriber_id), series) in enumerate(sorted(rates.items())):
        shown = [r for r in series if r.at >= start]
        points = " ".join(
            f"{(r.at - start) / window * WIDTH:.1f},{HEIGHT - r.per_second / top * HEIGHT:.1f}"
            for r in shown
        )
        lines.append(Line(
            label=f"{entity_type} / {subscriber_id}",
            colour=COLOURS[index % len(COLOURS)],
            points=points,
            last=shown[-1].per_second if shown else 0.0,
        ))
    return Chart(width=WIDTH, height=HEIGHT, top=top, minutes=window / 60, lines=lines)
