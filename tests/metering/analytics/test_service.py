"""The read views' service: time bounds, UTC buckets against a brute-force count, billing summary defaults."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.analytics.errors import InvalidTimeRange
from metering.analytics.service import analytics_service, parse_time_bound, plan_grant_nano_usd
from metering.config import Settings
from metering.db import Database
from metering.models import Account
from metering.periods import current_period, period_bounds
from tests.factories.billing_data import insert_usage, seed_world

STATUSES = ("pending", "priced", "custom_key", "unpriced", "quarantined")


class TestParseTimeBound:
    def test_a_date_as_to_includes_its_whole_day(self) -> None:
        assert parse_time_bound("2026-11-01", is_end=False) == datetime(2026, 11, 1, tzinfo=UTC)
        assert parse_time_bound("2026-11-01", is_end=True) == datetime(2026, 11, 2, tzinfo=UTC)

    def test_timestamps_are_converted_to_utc_and_to_is_inclusive(self) -> None:
        assert parse_time_bound("2026-11-01T02:00:00+02:00", is_end=False) == datetime(2026, 11, 1, tzinfo=UTC)
        assert parse_time_bound("2026-11-01T00:00:00Z", is_end=True) == datetime(2026, 11, 1, 0, 0, 0, 1, tzinfo=UTC)

    @pytest.mark.parametrize("value", ["2026-11-01T00:00:00", "2026-13-01", "tomorrow", "", "2026-11-01T25:00:00Z"])
    def test_refuses_what_is_not_a_date_or_zoned_timestamp(self, value: str) -> None:
        with pytest.raises(InvalidTimeRange):
            parse_time_bound(value, is_end=False)

    @given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
    def test_rfc3339_round_trip(self, moment: datetime) -> None:
        assert parse_time_bound(moment.isoformat().replace("+00:00", "Z"), is_end=False) == moment


class TestResolveRange:
    def test_defaults_to_the_current_period_up_to_the_end_of_today(self) -> None:
        start, end = analytics_service.resolve_range(start=None, end=None, interval="day")
        assert start == period_bounds(current_period())[0]
        assert end - datetime.now(UTC) <= timedelta(days=1) and end.hour == 0

    def test_only_to_given_starts_at_its_month(self) -> None:
        assert analytics_service.resolve_range(start=None, end="2026-10-31", interval="day") == (
            datetime(2026, 10, 1, tzinfo=UTC),
            datetime(2026, 11, 1, tzinfo=UTC),
        )

    def test_bucket_limits(self) -> None:
        # 9,600 hours (400 days) from 2026-01-01 00:00 end at 2027-02-05 00:00; 'to' includes its instant.
        analytics_service.resolve_range(start="2026-01-01", end="2027-02-04", interval="hour", max_points=9_600)
        with pytest.raises(InvalidTimeRange, match="has 9,601 points; at most 9,600"):
            analytics_service.resolve_range(
                start="2026-01-01", end="2027-02-05T00:00:00Z", interval="hour", max_points=9_600
            )
        analytics_service.resolve_range(start="2026-10-01", end="2026-10-03", interval="day", max_points=3)
        with pytest.raises(InvalidTimeRange, match="has 4 points; at most 3"):
            analytics_service.resolve_range(start="2026-10-01", end="2026-10-04", interval="day", max_points=3)
        with pytest.raises(InvalidTimeRange, match="from must not be after to"):
            analytics_service.resolve_range(start="2026-10-02", end="2026-10-01", interval="day")

    def test_the_cap_defaults_to_the_setting(self, settings: Settings) -> None:
        settings.usage_max_series_points = 48
        analytics_service.resolve_range(start="2026-10-01", end="2026-10-02", interval="hour")
        with pytest.raises(InvalidTimeRange, match="has 72 points; at most 48"):
            analytics_service.resolve_range(start="2026-10-01", end="2026-10-03", interval="hour")

    @pytest.mark.parametrize(
        ("start", "end", "message"),
        [
            (
                "0001-01-01T00:00:00Z",
                "0001-01-01T05:00:00Z",
                "from must be between 1970-01-01 and 9998-12-31, got 0001-01-01T00:00:00Z",
            ),
            ("1969-12-31", "1970-01-01", "from must be between 1970-01-01 and 9998-12-31, got 1969-12-31"),
            (
                "1970-01-01T00:30:00+01:00",
                None,
                "from must be between 1970-01-01 and 9998-12-31, got 1970-01-01T00:30:00+01:00",
            ),
            ("9998-12-01", "9999-12-31", "to must be between 1970-01-01 and 9998-12-31, got 9999-12-31"),
            (
                "9998-12-01",
                "9998-12-31T23:00:00-05:00",
                "to must be between 1970-01-01 and 9998-12-31, got 9998-12-31T23:00:00-05:00",
            ),
            (
                None,
                "9999-12-31T23:59:59.999999Z",
                "to must be between 1970-01-01 and 9998-12-31, got 9999-12-31T23:59:59.999999Z",
            ),
        ],
    )
    def test_dates_outside_1970_to_9998_are_refused_in_words(
        self, start: str | None, end: str | None, message: str
    ) -> None:
        with pytest.raises(InvalidTimeRange) as raised:
            analytics_service.resolve_range(start=start, end=end, interval="hour")
        assert raised.value.detail == message

    def test_the_first_and_last_days_are_allowed(self) -> None:
        assert analytics_service.resolve_range(start="1970-01-01", end="1970-01-01", interval="day") == (
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(1970, 1, 2, tzinfo=UTC),
        )
        assert analytics_service.resolve_range(start="9998-12-31", end="9998-12-31", interval="hour") == (
            datetime(9998, 12, 31, tzinfo=UTC),
            datetime(9999, 1, 1, tzinfo=UTC),
        )


class TestUsageSeries:
    @pytest.mark.parametrize("interval", ["day", "hour"])
    async def test_buckets_match_a_brute_force_count(self, db: Database, interval: str) -> None:
        await seed_world(db)
        rng = random.Random(7)
        base = datetime(2026, 10, 30, tzinfo=UTC)
        rows = []
        for index in range(400):
            status = rng.choice(STATUSES)
            rows.append(
                {
                    "request_id": f"r{index}",
                    "user": rng.choice(["alice", "bob", "carol"]),
                    "billing_account": "acme",
                    "provider": rng.choice(["together", "fireworks-ai"]),
                    "started_at": base + timedelta(seconds=rng.randrange(0, 3 * 86400)),
                    "custom_key": status == "custom_key",
                    "status": status,
                    "cost": rng.randrange(0, 10**12) if status == "priced" else None,
                }
            )
        await insert_usage(db, rows)
        start, end = base + timedelta(hours=5), base + timedelta(days=2, hours=3)
        async with db.session_scope() as session:
            account = await session.get(Account, "acme")
            series = await analytics_service.get_usage_series(
                session, account=account, start=start, end=end, interval=interval, group_by="provider"
            )

        step = timedelta(days=1) if interval == "day" else timedelta(hours=1)
        expected: Counter = Counter()
        for row in rows:
            if not start <= row["started_at"] < end:
                continue
            offset = (row["started_at"] - datetime(2026, 1, 1, tzinfo=UTC)) // step
            key = (datetime(2026, 1, 1, tzinfo=UTC) + offset * step, row["provider"])
            expected[(*key, "requests")] += not row["custom_key"]
            expected[(*key, "custom")] += row["custom_key"]
            expected[(*key, "priced")] += row["status"] == "priced"
            expected[(*key, "pending")] += row["status"] == "pending"
            expected[(*key, "cost")] += row["cost"] or 0
        got: Counter = Counter()
        for b in series.buckets:
            got[(b.start, b.key, "requests")] += b.requests
            got[(b.start, b.key, "custom")] += b.custom_key_requests
            got[(b.start, b.key, "priced")] += b.priced_requests
            got[(b.start, b.key, "pending")] += b.pending_requests
            got[(b.start, b.key, "cost")] += b.cost_nano_usd
        assert +got == +expected
        assert series.group_by == "provider"


class TestBillingSummary:
    async def test_plan_grant_is_per_seat_for_orgs(self, db: Database) -> None:
        await seed_world(db)
        async with db.session_scope() as session:
            acme, frank, erin = [await session.get(Account, n) for n in ("acme", "frank", "erin")]
            assert [plan_grant_nano_usd(a) for a in (acme, frank, erin)] == [4_000_000_000, 100_000_000, 2_000_000_000]
            summary = await analytics_service.get_billing_summary(session, account=acme, period="2099-01")
        assert (summary.credits_granted_nano_usd, summary.credits_remaining_nano_usd, summary.payg_nano_usd) == (
            4_000_000_000,
            4_000_000_000,
            0,
        )
