"""Billing periods: calendar months in UTC named ``YYYY-MM``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# YYYY-MM with a year from 1000 to 9998: every period has a previous and a next one that
# ``datetime`` can hold (year 0 and the month after 9999-12 cannot be).
PERIOD_REGEX = r"^([1-8]\d{3}|9[0-8]\d{2}|99[0-8]\d|999[0-8])-(0[1-9]|1[0-2])$"
PERIOD_PATTERN = re.compile(PERIOD_REGEX)

# Added to the wall clock by ``utcnow``. Zero everywhere except ``metering demo``, which
# steps it through a past month to play that month's billing in seconds; every module
# reads the time through ``utcnow``, so the whole process sees one consistent clock.
_clock_offset = timedelta(0)


def utcnow() -> datetime:
    return datetime.now(UTC) + _clock_offset


def set_clock_offset(offset: timedelta) -> None:
    """Shift this process's ``utcnow`` by ``offset`` from the wall clock; only the demo calls it."""
    global _clock_offset
    _clock_offset = offset


def clock_offset() -> timedelta:
    return _clock_offset


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes (as SQLite returns them) are UTC by construction."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def period_of(moment: datetime) -> str:
    moment = as_utc(moment)
    return f"{moment.year:04d}-{moment.month:02d}"


def current_period() -> str:
    return period_of(utcnow())


def parse_period(value: str) -> str:
    if not PERIOD_PATTERN.match(value):
        raise ValueError(f"period must be YYYY-MM, got {value!r}")
    return value


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a period in UTC."""
    match = PERIOD_PATTERN.match(period)
    if not match:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def next_period(period: str) -> str:
    return period_of(period_bounds(period)[1])


def previous_period(period: str) -> str:
    start, _ = period_bounds(period)
    year, month = (start.year, start.month - 1) if start.month > 1 else (start.year - 1, 12)
    return f"{year:04d}-{month:02d}"
