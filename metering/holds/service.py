"""Holds: estimates reserved by authorize until the usage record arrives (attach) or the TTL passes (expire).

A hold in status ``held`` counts in its account period's ``held_nano_usd``;
leaving that status (``attached`` or ``expired``) subtracts it again in the
same transaction, exactly once: the status change and the subtraction happen
under the row locks of the account period and the hold.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from metering.config import get_settings
from metering.holds.repository import HeldHold, hold_repository
from metering.periods import utcnow


@dataclass(frozen=True, slots=True)
class ExpiryResult:
    holds: int
    amount_nano_usd: int


def hold_expiry(now: datetime, ttl_seconds: int) -> datetime:
    """When a hold placed at ``now`` expires if no usage record names it."""
    return now + timedelta(seconds=ttl_seconds)


def _amounts_by_period(holds: list[HeldHold]) -> dict[tuple[str, str], int]:
    amounts: dict[tuple[str, str], int] = defaultdict(int)
    for hold in holds:
        amounts[(hold.account_name, hold.period)] += hold.amount_nano_usd
    return dict(amounts)


class HoldService:
    async def place_hold(
        self,
        session: AsyncSession,
        *,
        account: str,
        period: str,
        user: str,
        provider_id: str,
        model: str,
        amount_nano_usd: int,
        now: datetime,
    ) -> str:
        """Reserve ``amount_nano_usd`` on the account's period row, which the caller holds locked; returns the hold id."""
        hold_id = str(uuid.uuid4())
        await hold_repository.insert_hold(
            session,
            {
                "id": hold_id,
                "account_name": account,
                "user_name": user,
                "provider_id": provider_id,
                "model": model,
                "period": period,
                "amount_nano_usd": amount_nano_usd,
                "status": "held",
                "created_at": now,
                "expires_at": hold_expiry(now, get_settings().hold_ttl_seconds),
            },
        )
        return hold_id

    async def attach_holds(self, session: AsyncSession, usage_by_hold: dict[str, int]) -> dict[str, int]:
        """Attach holds to their usage records: hold_id → usage_record_id in, hold_id → amount out.

        Only holds still ``held`` are attached (also those past their TTL that the
        expiry job has not reached yet: the record did arrive). Their amounts leave
        ``held_nano_usd``; the caller moves them into the pending estimate. Unknown,
        expired or already attached holds are left out of the result.

        Locks the account periods of the holds (sorted) and then the holds; call it
        before locking other account rows in the same transaction.
        """
        if not usage_by_hold:
            return {}
        hold_ids = list(usage_by_hold)
        await hold_repository.lock_period_rows(session, await hold_repository.periods_of_holds(session, hold_ids))
        held = await hold_repository.lock_held(session, hold_ids)
        if not held:
            return {}
        await hold_repository.mark_attached(session, {hold.id: usage_by_hold[hold.id] for hold in held})
        await hold_repository.release_held_amounts(session, _amounts_by_period(held))
        return {hold.id: hold.amount_nano_usd for hold in held}

    async def expired_accounts(self, session: AsyncSession, *, now: datetime, limit: int = 1000) -> list[str]:
        return await hold_repository.expired_accounts(session, now=now, limit=limit)

    async def expire_account_holds(
        self, session: AsyncSession, *, account: str, now: datetime | None = None, limit: int = 5000
    ) -> ExpiryResult:
        """Expire up to ``limit`` of an account's holds past their TTL and release their amounts."""
        now = now or utcnow()
        periods = await hold_repository.expired_periods(session, account=account, now=now)
        await hold_repository.lock_period_rows(session, {(account, period) for period in periods})
        expired = await hold_repository.lock_expired(session, account=account, now=now, limit=limit)
        if not expired:
            return ExpiryResult(holds=0, amount_nano_usd=0)
        await hold_repository.mark_expired(session, [hold.id for hold in expired])
        await hold_repository.release_held_amounts(session, _amounts_by_period(expired))
        return ExpiryResult(holds=len(expired), amount_nano_usd=sum(hold.amount_nano_usd for hold in expired))


holds_service = HoldService()
