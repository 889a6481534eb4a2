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

from metering.balances.repository import balances_repository
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


@dataclass(frozen=True, slots=True)
class HoldClaim:
    """A usage record naming a hold: only a record of the hold's user, billing account and provider releases it."""

    usage_record_id: int
    user: str
    billing_account: str
    provider_id: str

    def owns(self, hold: HeldHold) -> bool:
        return (self.user, self.billing_account, self.provider_id) == (
            hold.user_name,
            hold.account_name,
            hold.provider_id,
        )


@dataclass(frozen=True, slots=True)
class Attached:
    """What ``attach_holds`` did: hold_id → amount moved for the records that own their hold, and the
    records that named a hold still held but not theirs (left alone)."""

    amounts: dict[str, int]
    foreign: list[int]


def _amounts_by_period(holds: list[HeldHold]) -> dict[tuple[str, str], tuple[int, int]]:
    """(account, period) → (amount, the part of it for providers that are not credit-eligible)."""
    amounts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for hold in holds:
        totals = amounts[(hold.account_name, hold.period)]
        totals[0] += hold.amount_nano_usd
        totals[1] += hold.amount_nano_usd if hold.payg_only else 0
    return {key: (total, payg_only) for key, (total, payg_only) in amounts.items()}


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
        credit_eligible: bool,
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
            credit_eligible=credit_eligible,
        )
        return hold_id

    async def attach_holds(self, session: AsyncSession, claims: dict[str, HoldClaim]) -> Attached:
        """Attach holds to the usage records that own them (same user, billing account and provider).

        Only holds still ``held`` are attached (also those past their TTL that the
        expiry job has not reached yet: the record did arrive). Their amounts leave
        ``held_nano_usd``; the caller moves them into the pending estimate. Unknown,
        expired or already attached holds are left out of the result; a hold named by a
        record that does not own it stays held (it expires as usual) and the record is
        reported in ``foreign``.

        Locks the account periods of the holds (sorted) and then the holds; call it
        before locking other account rows in the same transaction.
        """
        if not claims:
            return Attached({}, [])
        hold_ids = list(claims)
        await balances_repository.lock_keys(session, await hold_repository.periods_of_holds(session, hold_ids))
        held = await hold_repository.lock_held(session, hold_ids)
        owned = [hold for hold in held if claims[hold.id].owns(hold)]
        foreign = [claims[hold.id].usage_record_id for hold in held if not claims[hold.id].owns(hold)]
        if owned:
            await hold_repository.mark_attached(session, {hold.id: claims[hold.id].usage_record_id for hold in owned})
            await balances_repository.release_held(session, _amounts_by_period(owned))
        return Attached({hold.id: hold.amount_nano_usd for hold in owned}, foreign)

    async def expired_accounts(self, session: AsyncSession, *, now: datetime, limit: int = 1000) -> list[str]:
        return await hold_repository.expired_accounts(session, now=now, limit=limit)

    async def expire_account_holds(
        self, session: AsyncSession, *, account: str, now: datetime | None = None, limit: int = 5000
    ) -> ExpiryResult:
        """Expire up to ``limit`` of an account's holds past their TTL and release their amounts."""
        now = now or utcnow()
        periods = await hold_repository.expired_periods(session, account=account, now=now)
        await balances_repository.lock_keys(session, {(account, period) for period in periods})
        expired = await hold_repository.lock_expired(session, account=account, now=now, limit=limit)
        if not expired:
            return ExpiryResult(holds=0, amount_nano_usd=0)
        await hold_repository.mark_expired(session, [hold.id for hold in expired])
        await balances_repository.release_held(session, _amounts_by_period(expired))
        return ExpiryResult(holds=len(expired), amount_nano_usd=sum(hold.amount_nano_usd for hold in expired))


holds_service = HoldService()
