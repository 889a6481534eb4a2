"""The process clock offset of ``metering.periods``: ``utcnow`` and everything that reads it move together."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from metering import periods
from metering.periods import clock_offset, current_period, period_of, set_clock_offset, utcnow


@pytest.fixture(autouse=True)
def restore_clock() -> Iterator[None]:
    yield
    set_clock_offset(timedelta(0))


class TestClockOffset:
    def test_zero_by_default_so_utcnow_is_the_wall_clock(self) -> None:
        before = datetime.now(UTC)
        now = utcnow()
        after = datetime.now(UTC)
        assert clock_offset() == timedelta(0)
        assert before <= now <= after
        assert now.tzinfo is UTC

    def test_offset_moves_utcnow_and_the_current_period(self) -> None:
        target = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
        set_clock_offset(target - datetime.now(UTC))
        now = utcnow()
        assert timedelta(0) <= now - target < timedelta(seconds=5)
        assert current_period() == "2026-10"

    def test_time_keeps_flowing_under_an_offset(self) -> None:
        set_clock_offset(timedelta(days=-40))
        first = utcnow()
        second = utcnow()
        assert second >= first
        assert period_of(first) == period_of(datetime.now(UTC) - timedelta(days=40))

    def test_a_module_that_imported_utcnow_by_name_sees_the_offset(self) -> None:
        from metering.ledger import service as ledger_service_module

        set_clock_offset(timedelta(days=3))
        seen = ledger_service_module.utcnow()
        assert seen - datetime.now(UTC) > timedelta(days=2, hours=23)
        assert ledger_service_module.utcnow is periods.utcnow

    def test_reset_to_zero_returns_to_the_wall_clock(self) -> None:
        set_clock_offset(timedelta(hours=-5))
        set_clock_offset(timedelta(0))
        assert abs(utcnow() - datetime.now(UTC)) < timedelta(seconds=5)


class TestPeriodNames:
    @pytest.mark.parametrize("name", ["1000-01", "2026-11", "9998-12"])
    def test_a_period_with_a_previous_and_a_next_one_is_accepted(self, name: str) -> None:
        assert periods.parse_period(name) == name
        start, end = periods.period_bounds(name)
        assert (period_of(start), period_of(end)) == (name, periods.next_period(name))
        assert periods.previous_period(name) < name < periods.next_period(name)

    @pytest.mark.parametrize("name", ["0000-01", "0999-12", "9999-01", "9999-12", "2026-13", "2026-00", "26-11"])
    def test_a_period_datetime_cannot_bound_is_refused(self, name: str) -> None:
        with pytest.raises(ValueError, match="YYYY-MM"):
            periods.parse_period(name)
