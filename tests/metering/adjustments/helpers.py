"""Adjustments and closes for the adjustment tests, each in its own transaction as a route or job makes them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select

from metering.adjustments.service import AdjustmentMade, adjustment_service
from metering.db import Database
from metering.invoicing.service import CloseResult, invoicing_service
from metering.ledger import codes
from metering.models import Adjustment, LedgerAccount

SEPT = datetime(2026, 9, 10, 12, tzinfo=UTC)
OCT = datetime(2026, 10, 10, 12, tzinfo=UTC)
NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
# Made "now" in tests: after every period they close, so any of them may be corrected.
LATER = datetime(2026, 12, 5, tzinfo=UTC)
USD = 1_000_000_000


async def adjust(
    db: Database,
    account: str,
    amount: object,
    period: str,
    *,
    reason: str = "provider outage refund",
    key: str | None = None,
    request_ids: Sequence[str] | None = None,
    now: datetime = LATER,
) -> AdjustmentMade:
    async with db.session_scope() as session:
        return await adjustment_service.adjust(
            session,
            account_name=account,
            amount_nano_usd=amount,
            reason=reason,
            corrects_period=period,
            request_ids=request_ids,
            idempotency_key=key,
            actor="fiona",
            now=now,
        )


async def close(db: Database, period: str, *, now: datetime = LATER) -> CloseResult:
    async with db.session_scope() as session:
        return await invoicing_service.close_period(session, period=period, force=True, now=now)


async def balance(db: Database, code: str) -> int:
    async with db.session_scope() as session:
        found = await session.scalar(select(LedgerAccount.balance_nano_usd).where(LedgerAccount.code == code))
        return int(found or 0)


async def adjustment_balance(db: Database, account: str, period: str) -> int:
    return await balance(db, codes.adjustment(account, period))


async def adjustments(db: Database, account: str) -> list[Adjustment]:
    async with db.session_scope() as session:
        return list(
            await session.scalars(select(Adjustment).where(Adjustment.account_name == account).order_by(Adjustment.id))
        )
