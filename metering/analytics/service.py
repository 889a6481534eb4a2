"""The user-facing read views (SPEC §8): billing summary, usage time series, request log, audit.

Callers pass an ``Account`` already authorized by ``metering.auth.policy``; nothing here
checks who is asking.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from metering.adjustments.repository import adjustment_repository
from metering.analytics.bounds import EARLIEST_DAY, LATEST_DAY, in_range
from metering.analytics.drift import ModelDrift, drift_service
from metering.analytics.errors import InvalidCursor, InvalidTimeRange
from metering.analytics.repository import UsageBucketRow, analytics_repository
from metering.config import get_settings
from metering.credit_grants.service import credit_grant_service
from metering.limits.service import AuditRecord, limits_service
from metering.models import Account, UsageRecord
from metering.periods import current_period, period_bounds, utcnow

INTERVALS = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
# The largest id a BIGINT column holds: a cursor naming a larger one is forged.
MAX_ROW_ID = 2**63 - 1


@dataclass(frozen=True)
class BillingSummary:
    account: str
    kind: str
    plan: str
    seats: int
    period: str
    status: str
    credits_granted_nano_usd: int
    credits_used_nano_usd: int
    credits_remaining_nano_usd: int
    payg_nano_usd: int
    written_off_nano_usd: int
    spending_limit_nano_usd: int | None
    disabled_providers: list[str]
    pending_requests: int
    pending_estimate_nano_usd: int
    held_nano_usd: int
    # Per (provider, model): the account's estimates against the prices of the period.
    estimate_drift: list[ModelDrift] = field(default_factory=list)
    # What is left, now, of the account's prepaid credits and of finance's credit grants.
    prepaid_balance_nano_usd: int = 0
    credit_grants_remaining_nano_usd: int = 0
    # Finance's adjustments posted to the period (carried credit included): > 0 owed, < 0 in the account's favour.
    adjustments_nano_usd: int = 0


@dataclass(frozen=True)
class UsageSeries:
    account: str
    start: datetime
    end: datetime
    interval: str
    group_by: str
    buckets: list[UsageBucketRow]


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def plan_grant_nano_usd(account: Account) -> int:
    """What the account's plan grants for one period (orgs: per seat)."""
    terms = get_settings().plans.get(account.plan)
    if terms is None:
        return 0
    return terms.credits_nano_usd * (account.seats if terms.per_seat else 1)


def parse_time_bound(value: str, *, is_end: bool, name: str | None = None) -> datetime:
    """A date (``2026-11-01``) or an RFC 3339 timestamp with a zone, as a UTC instant.

    A date as ``to`` includes its whole day, so it becomes the next midnight (exclusive);
    a timestamp as ``to`` includes that instant. Either must fall on a day from 1970-01-01
    to 9998-12-31 (``metering.analytics.bounds``). ``name`` is the query parameter the
    messages name: ``to`` for an end, ``from`` otherwise.
    """
    name = name or ("to" if is_end else "from")
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment, step = datetime(day.year, day.month, day.day, tzinfo=UTC), timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            step = timedelta(microseconds=1)
    except ValueError as exc:
        raise InvalidTimeRange(
            f"{name} must be a date (YYYY-MM-DD) or an RFC 3339 timestamp with a zone, got {value!r}"
        ) from exc
    if moment.tzinfo is None:
        raise InvalidTimeRange(f"{name} needs a zone (e.g. Z or +00:00), got {value!r}")
    # Compared as instants before any arithmetic: the day after 9999-12-31 would overflow.
    if not in_range(moment):
        raise InvalidTimeRange(f"{name} must be between {EARLIEST_DAY} and {LATEST_DAY}, got {value}")
    moment = moment.astimezone(UTC)
    return moment + step if is_end else moment


def series_points(start: datetime, end: datetime, interval: str) -> int:
    """How many buckets of ``interval`` a series over ``[start, end)`` has (the first holds ``start``)."""
    return -((_floor(start, interval) - end) // INTERVALS[interval])


def _floor(moment: datetime, interval: str) -> datetime:
    if interval == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def encode_cursor(*parts: object) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc
    if not isinstance(parts, list):
        raise InvalidCursor("cursor is not one this service issued")
    return parts


def _cursor_id(value: object) -> int:
    """A row id from a cursor: an integer a BIGINT column can hold (the driver would fail on a larger one)."""
    if type(value) is not int or not 0 <= value <= MAX_ROW_ID:
        raise InvalidCursor("cursor is not one this service issued")
    return value


def _cursor_moment(value: object) -> datetime:
    """A zoned timestamp from a cursor, on a day a caller may ask about (``metering.analytics.bounds``)."""
    try:
        moment = datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc
    if moment.tzinfo is None or not in_range(moment):
        raise InvalidCursor("cursor is not one this service issued")
    return moment.astimezone(UTC)


class AnalyticsService:
    async def get_billing_summary(
        self, session: AsyncSession, *, account: Account, period: str | None = None
    ) -> BillingSummary:
        """The period's totals from the ``account_periods`` cache (zeros when it has no row yet).

        With no row, ``credits_granted_nano_usd`` is what the plan will grant when the period is
        the current or a future one (grants are made at period start or on first use), and 0
        for a past period, when nothing was granted.
        """
        period = period or current_period()
        extra = await credit_grant_service.remaining(session, account_name=account.name)  # now, whatever ``period``
        row = await analytics_repository.account_period(session, account=account.name, period=period)
        if row is not None:
            granted, used = row.credits_granted_nano_usd, row.credits_used_nano_usd
            payg, written_off = row.payg_nano_usd, row.written_off_nano_usd
            pending_estimate, held = row.pending_estimate_nano_usd, row.held_nano_usd
        else:
            granted = plan_grant_nano_usd(account) if period >= current_period() else 0
            used = payg = written_off = pending_estimate = held = 0
        return BillingSummary(
            account=account.name,
            kind=account.kind,
            plan=account.plan,
            seats=account.seats,
            period=period,
            status=account.status,
            credits_granted_nano_usd=granted,
            credits_used_nano_usd=used,
            credits_remaining_nano_usd=max(granted - used, 0),
            payg_nano_usd=payg,
            written_off_nano_usd=written_off,
            spending_limit_nano_usd=account.spending_limit_nano_usd,
            disabled_providers=await limits_service.disabled_providers(session, account_name=account.name),
            pending_requests=await analytics_repository.count_pending(session, account=account.name, period=period),
            pending_estimate_nano_usd=pending_estimate,
            held_nano_usd=held,
            estimate_drift=await drift_service.estimate_drift(session, period=period, account=account.name),
            prepaid_balance_nano_usd=extra.get("prepaid", 0),
            credit_grants_remaining_nano_usd=extra.get("grant", 0),
            adjustments_nano_usd=await adjustment_repository.posted_to(session, account=account.name, period=period),
        )

    def resolve_range(
        self, *, start: str | None, end: str | None, interval: str, max_points: int | None = None
    ) -> tuple[datetime, datetime]:
        """``[start, end)`` from the query; defaults: the current period's start up to the end of today.

        Refused with ``InvalidTimeRange``: a bound that is not a date or a zoned timestamp, or
        not on a day from 1970-01-01 to 9998-12-31; ``from`` after ``to``; a series of more than
        ``max_points`` buckets (default: the ``usage_max_series_points`` setting).
        """
        if interval not in INTERVALS:
            raise InvalidTimeRange(f"interval must be one of {', '.join(sorted(INTERVALS))}, got {interval!r}")
        if max_points is None:
            max_points = get_settings().usage_max_series_points
        start_at = parse_time_bound(start, is_end=False) if start else None
        end_at = parse_time_bound(end, is_end=True) if end else _floor(utcnow(), "day") + INTERVALS["day"]
        if start_at is None and end:
            start_at = _floor(end_at - timedelta(microseconds=1), "day").replace(day=1)  # the month of 'to'
        elif start_at is None:
            start_at = period_bounds(current_period())[0]
        shown_from = start or f"{start_at.date()} (the default)"
        shown_to = end or f"{(end_at - INTERVALS['day']).date()} (the default: today)"
        if start_at >= end_at:
            raise InvalidTimeRange(f"from must not be after to, got from={shown_from} and to={shown_to}")
        points = series_points(start_at, end_at, interval)
        if points > max_points:
            raise InvalidTimeRange(
                f"the range {shown_from}..{shown_to} at interval={interval} has {points:,} points; at most {max_points:,}"
            )
        return start_at, end_at

    async def get_usage_series(
        self,
        session: AsyncSession,
        *,
        account: Account,
        start: datetime,
        end: datetime,
        interval: str,
        group_by: str | None,
    ) -> UsageSeries:
        """Counts and priced cost per UTC bucket and group; orgs group by member unless told otherwise."""
        group_by = group_by or ("member" if account.kind == "org" else "provider")
        buckets = await analytics_repository.usage_buckets(
            session, account=account.name, start=start, end=end, interval=interval, group_by=group_by
        )
        return UsageSeries(
            account=account.name, start=start, end=end, interval=interval, group_by=group_by, buckets=buckets
        )

    async def list_requests(
        self, session: AsyncSession, *, account: Account, period: str | None, cursor: str | None, limit: int
    ) -> Page[UsageRecord]:
        """One page of the request log, newest first; the cursor is stable while requests arrive."""
        start = end = None
        if period is not None:
            start, end = period_bounds(period)
        after = None
        if cursor:
            parts = decode_cursor(cursor)
            if len(parts) != 2:
                raise InvalidCursor("cursor is not one this service issued")
            after = (_cursor_moment(parts[0]), _cursor_id(parts[1]))
        rows = await analytics_repository.requests_page(
            session, account=account.name, start=start, end=end, after=after, limit=limit + 1
        )
        items = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.started_at.astimezone(UTC).isoformat(), last.id)
        return Page(items=items, next_cursor=next_cursor)

    async def list_audit(
        self, session: AsyncSession, *, account: Account, cursor: str | None, limit: int
    ) -> Page[AuditRecord]:
        """Billing setting changes of the account, newest first."""
        before_id = None
        if cursor:
            parts = decode_cursor(cursor)
            if len(parts) != 1:
                raise InvalidCursor("cursor is not one this service issued")
            before_id = _cursor_id(parts[0])
        rows = await limits_service.list_audit(session, account_name=account.name, before_id=before_id, limit=limit + 1)
        items = rows[:limit]
        next_cursor = encode_cursor(items[-1].id) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)


analytics_service = AnalyticsService()
