"""The usage series is written without building its response model: the bytes must be the model's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from api.routes.usage_views import series_body, series_json
from api.schemas.usage_views import UsageSeriesRead
from metering.analytics.repository import UsageBucketRow
from metering.analytics.service import UsageSeries

START = datetime(2026, 10, 5, tzinfo=UTC)


def _rows() -> list[UsageBucketRow]:
    return [
        UsageBucketRow(START + timedelta(days=day), key, day + 1, day, 1_000_000_007 * day, 1, day % 2)
        for day in range(3)
        for key in ("bob", "alice", "zoë")
    ]


@pytest.mark.parametrize(
    ("start", "end", "interval"),
    [
        (START, START + timedelta(days=3), "day"),
        (START + timedelta(hours=10, microseconds=250_000), START + timedelta(hours=13, seconds=1), "hour"),
        (START.astimezone(timezone(timedelta(hours=2))), START + timedelta(days=2), "day"),
        (START, START, "day"),
    ],
)
def test_the_body_is_the_models_json_byte_for_byte(start: datetime, end: datetime, interval: str) -> None:
    series = UsageSeries(account="acme", start=start, end=end, interval=interval, group_by="member", buckets=_rows())
    model = UsageSeriesRead.model_validate(series_body(series))
    assert series_json(series) == model.model_dump_json(by_alias=True).encode()


def test_no_usage_is_an_empty_series() -> None:
    series = UsageSeries(
        account="bob", start=START, end=START + timedelta(days=1), interval="day", group_by="provider", buckets=[]
    )
    model = UsageSeriesRead.model_validate(series_body(series))
    assert series_json(series) == model.model_dump_json(by_alias=True).encode()
    assert model.series == [] and model.buckets == [START]
