"""Pending usage records inserted directly (many at once), for cost-collection tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import UsageRecord
from metering.periods import period_of, utcnow


async def create_pending_usage(
    session: AsyncSession,
    *,
    provider_id: str,
    request_ids: list[str],
    user: str,
    billing_account: str | None = None,
    model: str = "org/model",
    started_at: datetime | None = None,
    received_at: datetime | None = None,
) -> dict[str, int]:
    """Pending records (estimate 0, so account-period caches need no adjustment); returns request id → row id."""
    started_at = started_at or utcnow() - timedelta(minutes=5)
    received_at = received_at or started_at + timedelta(seconds=1)
    rows = [
        {
            "provider_id": provider_id,
            "request_id": request_id,
            "user_name": user,
            "billing_account": billing_account or user,
            "bill_to_flagged": False,
            "model": model,
            "custom_key": False,
            "started_at": started_at,
            "period": period_of(started_at),
            "content_hash": f"{index:032x}",
            "status": "pending",
            "estimate_nano_usd": 0,
            "received_at": received_at,
            "attempts": 0,
        }
        for index, request_id in enumerate(request_ids)
    ]
    if rows:
        await session.execute(insert(UsageRecord), rows)
    result = await session.execute(
        select(UsageRecord.request_id, UsageRecord.id).where(
            UsageRecord.provider_id == provider_id, UsageRecord.request_id.in_(request_ids)
        )
    )
    return dict(result.all())
