"""What a caller may ask the read views about: days from 1970-01-01 to 9998-12-31, the months of those years.

Beyond them the drivers and the database stop being exact (asyncpg sends year 1 as
``-infinity``, so a series from it never ends; the day after 9999-12-31 overflows Python's
``datetime``), and no billing data can exist there.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

EARLIEST_DAY = date(1970, 1, 1)
LATEST_DAY = date(9998, 12, 31)
# [RANGE_START, RANGE_END): the instants of those days in UTC.
RANGE_START = datetime(EARLIEST_DAY.year, EARLIEST_DAY.month, EARLIEST_DAY.day, tzinfo=UTC)
RANGE_END = datetime(LATEST_DAY.year + 1, 1, 1, tzinfo=UTC)
EARLIEST_PERIOD = f"{EARLIEST_DAY.year}-01"
LATEST_PERIOD = f"{LATEST_DAY.year}-12"
# The same months as a regular expression, for the OpenAPI schema (``period_problem`` is the check).
PERIOD_REGEX = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
_PERIOD_SHAPE = re.compile(r"([0-9]{4})-([0-9]{2})")


def period_problem(value: str) -> str | None:
    """Why ``value`` is not a billing period a caller may ask about, in words; None when it is one."""
    match = _PERIOD_SHAPE.fullmatch(value)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        return f"period must be YYYY-MM (a month 01–12), got {value!r}"
    if not EARLIEST_DAY.year <= int(match.group(1)) <= LATEST_DAY.year:
        return f"period must be between {EARLIEST_PERIOD} and {LATEST_PERIOD}, got {value!r}"
    return None


def in_range(moment: datetime) -> bool:
    """Whether a zoned ``moment`` falls on one of the days a caller may ask about (compared as instants)."""
    return RANGE_START <= moment < RANGE_END
