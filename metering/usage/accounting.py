"""How usage moves money: estimates for new records, and settling priced/quarantined/unpriced ones."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from metering.usage.types import AcceptedUsage, PricedRequest, QuarantinedRequest, SettleResult


async def account_for_new_usage(session: AsyncSession, accepted: list[AcceptedUsage]) -> None:
    """Called by ingest in the same transaction as the insert of ``accepted`` (new rows only)."""
    raise NotImplementedError


async def settle(
    session: AsyncSession,
    *,
    priced: list[PricedRequest] = (),
    quarantined: list[QuarantinedRequest] = (),
    unpriced: list[int] = (),
) -> SettleResult:
    """Called by cost collection in the batch's transaction."""
    raise NotImplementedError
