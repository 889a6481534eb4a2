"""The usage chart of the billing page as plain geometry: one line per member over the days of a period.

Everything is computed here with integers (pixel positions included), so the template
only draws; a browser needs no script and no external asset to show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from metering.analytics.repository import UsageBucketRow
from metering.analytics.service import UsageSeries
from metering.money import format_usd

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 84, 16, 14, 30
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563", "#65a30d", "#b45309")
Y_DIVISIONS = 4
COUNT_FIELDS = ("requests", "priced_requests", "cost_nano_usd", "pending_requests", "custom_key_requests")


@dataclass(frozen=True)
class ChartPoint:
    day: date
    x: int
    y: int
    cost_nano_usd: int
    requests: int
    # False for a day without any request: drawn on the line, not marked.
    has_usage: bool


@dataclass(frozen=True)
class ChartSeries:
    member: str
    color: str
    points: list[ChartPoint]
    totals: dict[str, int]

    @property
    def polyline(self) -> str:
        return " ".join(f"{point.x},{point.y}" for point in self.points)

    @property
    def marks(self) -> list[ChartPoint]:
        return [point for point in self.points if point.has_usage]


@dataclass(frozen=True)
class Tick:
    position: int
    label: str
    nano_usd: int | None = None


@dataclass(frozen=True)
class UsageChart:
    series: list[ChartSeries]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    axis_max_nano_usd: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    right: int = WIDTH - RIGHT
    bottom: int = HEIGHT - BOTTOM


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^k nano-USD at or above ``value`` (at least 1), for a readable axis."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return factor * step
        step *= 10


def _days(start: datetime, end: datetime) -> list[date]:
    """The UTC days of ``[start, end)``, which are midnights (a period's bounds)."""
    return [start.date() + timedelta(days=offset) for offset in range((end - start).days)]


def build_chart(series: UsageSeries) -> UsageChart:
    """Daily priced cost per member of ``series`` (a day-interval, member-grouped series)."""
    days = _days(series.start, series.end)
    by_member: dict[str, dict[date, UsageBucketRow]] = {}
    for row in series.buckets:
        by_member.setdefault(row.key, {})[row.start.date()] = row
    axis_max = nice_ceiling(max((row.cost_nano_usd for row in series.buckets), default=0))
    plot_width, plot_height = WIDTH - RIGHT - LEFT, HEIGHT - BOTTOM - TOP
    x_of = {day: LEFT + index * plot_width // max(len(days) - 1, 1) for index, day in enumerate(days)}

    def y_of(nano_usd: int) -> int:
        return HEIGHT - BOTTOM - nano_usd * plot_height // axis_max

    lines = []
    for index, (member, rows) in enumerate(sorted(by_member.items())):
        points = []
        for day in days:
            row = rows.get(day)
            cost = row.cost_nano_usd if row else 0
            points.append(ChartPoint(day, x_of[day], y_of(cost), cost, row.requests if row else 0, row is not None))
        totals = {field: sum(getattr(row, field) for row in rows.values()) for field in COUNT_FIELDS}
        lines.append(ChartSeries(member, PALETTE[index % len(PALETTE)], points, totals))
    y_ticks = [
        Tick(y_of(value), format_usd(value, trim=True), value)
        for value in (axis_max * step // Y_DIVISIONS for step in range(Y_DIVISIONS + 1))
    ]
    x_ticks = [Tick(x_of[day], f"{day:%b} {day.day}") for day in days if (day.day - 1) % 7 == 0]
    return UsageChart(series=lines, x_ticks=x_ticks, y_ticks=y_ticks, axis_max_nano_usd=axis_max)
