"""Helpers for ledger tests: usage records stored the way ingest stores them, and ledger reads."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import AccountPeriod, LedgerAccount, LedgerEntry, LedgerTransaction, UsageRecord
from metering.periods import period_bounds, period_of, utcnow
from metering.usage.accounting import account_for_new_usage
from metering.usage.types import AcceptedUsage

_request_ids = itertools.count(1)


def in_current_period() -> datetime:
    return utcnow().replace(microsecond=0)


def minutes_ago(minutes: int) -> datetime:
    """``minutes`` ago, but never before the current period began (tests run on the 1st too)."""
    start, _ = period_bounds(period_of(utcnow()))
    return max(utcnow() - timedelta(minutes=minutes), start)


async def store_usage(
    session: AsyncSession,
    *,
    provider: str = "together",
    user: str = "alice",
    billing_account: str | None = None,
    model: str = "org/model",
    started_at: datetime | None = None,
    custom_key: bool = False,
    hold_id: str | None = None,
    duration_ms: int | None = None,
    hardware: str | None = None,
    request_id: str | None = None,
    account: bool = True,
) -> AcceptedUsage:
    """Insert one usage record as ingest does and, unless ``account`` is False, account for it."""
    started_at = started_at or in_current_period()
    record = UsageRecord(
        provider_id=provider,
        request_id=request_id or f"req-{next(_request_ids)}",
        user_name=user,
        billing_account=billing_account or user,
        model=model,
        custom_key=custom_key,
        started_at=started_at,
        period=period_of(started_at),
        duration_ms=duration_ms,
        hardware=hardware,
        hold_id=hold_id,
        content_hash="0" * 32,
        status="custom_key" if custom_key else "pending",
        estimate_nano_usd=0,
        received_at=utcnow(),
        attempts=0,
    )
    session.add(record)
    await session.flush()
    accepted = AcceptedUsage(
        id=record.id,
        provider_id=provider,
        request_id=record.request_id,
        user_name=user,
        billing_account=record.billing_account,
        model=model,
        period=record.period,
        started_at=started_at,
        custom_key=custom_key,
        hold_id=hold_id,
        duration_ms=duration_ms,
        hardware=hardware,
        input_tokens=None,
        output_tokens=None,
    )
    if account:
        await account_for_new_usage(session, [accepted])
    return accepted


async def balance(session: AsyncSession, code: str) -> int:
    value = await session.scalar(select(LedgerAccount.balance_nano_usd).where(LedgerAccount.code == code))
    return value or 0


async def entries_sum(session: AsyncSession, code: str) -> int:
    value = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_nano_usd), 0))
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.ledger_account_id)
        .where(LedgerAccount.code == code)
    )
    return int(value)


async def period_row(session: AsyncSession, account: str, period: str) -> AccountPeriod:
    row = await session.scalar(
        select(AccountPeriod)
        .where(AccountPeriod.account_name == account, AccountPeriod.period == period)
        .execution_options(populate_existing=True)
    )
    assert row is not None, f"no account_periods row for {account} {period}"
    return row


async def record(session: AsyncSession, record_id: int) -> UsageRecord:
    return await session.scalar(
        select(UsageRecord).where(UsageRecord.id == record_id).execution_options(populate_existing=True)
    )


async def transactions(session: AsyncSession, **filters: object) -> list[LedgerTransaction]:
    statement = select(LedgerTransaction).order_by(LedgerTransaction.id)
    for name, value in filters.items():
        statement = statement.where(getattr(LedgerTransaction, name) == value)
    return list(await session.scalars(statement))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
