"""Credit grants by finance and prepaid credits bought through Stripe, posted and spent exactly once.

- A grant is posted when made (``grants_expense`` → ``granted_credits:<account>:<period>``);
  prepaid credits when Stripe says the payment succeeded, once per PaymentIntent (the unique
  ``payment_intent_id``), whether or not the top-up call that created it committed first
  (``prepaid_cash`` → ``prepaid_credits:<account>:<period>``).
- Costs spend them after the period's plan credits, soonest expiry first
  (``metering.charging.split``), for any billable request; settling locks them
  (``lock_for_settling``) after the account-period rows and writes back what it took
  (``record_spending``).
- What is left after a grant's last period expires with a posting (``expire``); a refund of a
  prepaid payment takes back what is left of it, up to the refund (``take_back_refund``).

``credit_balances`` holds each account's spendable sum, updated with the grants it sums, so
authorize reads one row for it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.charging.split import SpendableCredit
from metering.credit_grants.errors import InvalidCreditGrant
from metering.credit_grants.repository import credit_grant_repository
from metering.errors import AccountNotFound
from metering.ledger import codes
from metering.ledger.service import Posting, ledger_service
from metering.limits.repository import limit_repository
from metering.models import CreditGrant
from metering.periods import parse_period, period_of, utcnow

GRANT_ACTION = "credit_grant.create"
TOP_UP_ACTION = "prepaid.credited"
REFUND_ACTION = "prepaid.refunded"
EXPIRY_ACTION = "credit_grant.expired"
MAX_REASON = 500
# Far beyond any real grant, and far below where sums of them could overflow a BIGINT.
MAX_AMOUNT_NANO_USD = 10**15
_EXPIRED_PER_PASS = 1_000


@dataclass(frozen=True, slots=True)
class CreditGrantView:
    id: int
    account: str
    source: str
    status: str
    amount_nano_usd: int
    remaining_nano_usd: int
    expires_period: str | None
    reason: str
    created_by: str
    created_at: datetime


def _view(grant: CreditGrant) -> CreditGrantView:
    return CreditGrantView(
        grant.id,
        grant.account_name,
        grant.source,
        grant.status,
        grant.amount_nano_usd,
        grant.remaining_nano_usd,
        grant.expires_period,
        grant.reason,
        grant.created_by,
        grant.created_at,
    )


def checked_amount(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT_NANO_USD:
        raise InvalidCreditGrant(f"amount_nano_usd must be a whole number from 1 to {MAX_AMOUNT_NANO_USD}")
    return amount


def _audit(session: AsyncSession, grant: CreditGrant, *, action: str, actor: str, before: int, now: datetime) -> None:
    """Who, when, why (the reason), and the grant's remaining amount before and after."""
    after = {
        "id": grant.id,
        "source": grant.source,
        "amount_nano_usd": grant.amount_nano_usd,
        "remaining_nano_usd": grant.remaining_nano_usd,
        "expires_period": grant.expires_period,
        "reason": grant.reason,
    }
    limit_repository.add_audit_event(
        session,
        account=grant.account_name,
        actor=actor,
        action=action,
        before=orjson.dumps({"id": grant.id, "remaining_nano_usd": before}).decode(),
        after=orjson.dumps(after).decode(),
        now=now,
    )


class CreditGrantService:
    async def grant(
        self,
        session: AsyncSession,
        *,
        account_name: str,
        amount_nano_usd: object,
        reason: str,
        expires_period: str | None,
        actor: str,
    ) -> CreditGrantView:
        """Finance gives ``account_name`` credit, spendable now and until ``expires_period`` ends."""
        amount = checked_amount(amount_nano_usd)
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON:
            raise InvalidCreditGrant(f"reason must be 1 to {MAX_REASON} characters")
        now = utcnow()
        period = period_of(now)
        if expires_period is not None:
            try:
                parse_period(expires_period)
            except ValueError as exc:
                raise InvalidCreditGrant(f"expires_period: {exc}") from exc
            if expires_period < period:
                raise InvalidCreditGrant(f"expires_period {expires_period} has already ended")
        if await account_repository.get(session, account_name) is None:
            raise AccountNotFound(f"no account named {account_name!r}", account=account_name)
        grant = CreditGrant(
            account_name=account_name,
            source="grant",
            status="active",
            amount_nano_usd=amount,
            remaining_nano_usd=amount,
            expires_period=expires_period,
            period=period,
            reason=reason,
            created_by=actor,
            created_at=now,
        )
        await self._credit(session, grant, cash_code=codes.GRANTS_EXPENSE, memo=reason)
        _audit(session, grant, action=GRANT_ACTION, actor=actor, before=0, now=now)
        return _view(grant)

    async def list_grants(self, session: AsyncSession, *, account_name: str, limit: int = 500) -> list[CreditGrantView]:
        return [_view(grant) for grant in await credit_grant_repository.of_account(session, account_name, limit=limit)]

    async def remaining(self, session: AsyncSession, *, account_name: str, period: str | None = None) -> dict[str, int]:
        """What is left of the account's grants (``grant``) and prepaid credits (``prepaid``) that pay in
        ``period`` (default: the current one)."""
        return await credit_grant_repository.spendable_in(session, account_name, period or period_of(utcnow()))

    async def spendable(self, session: AsyncSession, *, account_name: str, period: str) -> int:
        """What the account's grants and prepaid credits can pay in ``period``: read by authorize after the
        period row is locked. Grants whose last period has ended count for nothing here, expiry job or not."""
        if not await credit_grant_repository.available(session, [account_name]):
            return 0
        return sum((await credit_grant_repository.spendable_in(session, account_name, period)).values())

    async def accounts_with_credit(self, session: AsyncSession, names: Iterable[str]) -> set[str]:
        """Which of ``names`` have grants or prepaid credits to spend (read without a lock)."""
        return set(await credit_grant_repository.available(session, names))

    async def record_top_up(
        self, session: AsyncSession, *, account_name: str, payment_intent_id: str, amount_nano_usd: int, actor: str
    ) -> None:
        """A top-up asked for and not paid yet; nothing to spend until ``credit_top_up``."""
        await credit_grant_repository.lock_balance(session, account_name)  # serializes with the webhook's credit
        if await credit_grant_repository.by_payment_intent(session, payment_intent_id) is not None:
            return  # its payment already arrived (the webhook can beat this call)
        grant = CreditGrant(
            account_name=account_name,
            source="prepaid",
            status="pending",
            amount_nano_usd=checked_amount(amount_nano_usd),
            remaining_nano_usd=0,
            reason="prepaid top-up",
            created_by=actor,
            created_at=utcnow(),
            payment_intent_id=payment_intent_id,
        )
        credit_grant_repository.add(session, grant)
        await session.flush()

    async def credit_top_up(
        self, session: AsyncSession, *, account_name: str, payment_intent_id: str, amount_nano_usd: int
    ) -> bool:
        """The payment of ``payment_intent_id`` succeeded: its amount becomes prepaid credit, once.

        Returns True when credited now; False for a replay (already credited).
        """
        amount = checked_amount(amount_nano_usd)
        now = utcnow()
        known = await credit_grant_repository.by_payment_intent(session, payment_intent_id)
        owner = known.account_name if known is not None else account_name
        await credit_grant_repository.lock_balance(session, owner)  # the lock order: balance, then grants
        grant = (await credit_grant_repository.lock_grants(session, [known.id]))[0] if known is not None else None
        if grant is None:
            # A top-up recorded meanwhile was recorded under this same balance lock: look again.
            grant = await credit_grant_repository.by_payment_intent(session, payment_intent_id)
        if grant is not None and grant.status != "pending":
            return False
        if grant is None:
            grant = CreditGrant(
                account_name=account_name,
                source="prepaid",
                status="pending",
                amount_nano_usd=amount,
                remaining_nano_usd=0,
                reason="prepaid top-up",
                created_by="stripe",
                created_at=now,
                payment_intent_id=payment_intent_id,
            )
        grant.status, grant.amount_nano_usd, grant.remaining_nano_usd = "active", amount, amount
        grant.period = period_of(now)
        await self._credit(session, grant, cash_code=codes.PREPAID_CASH, memo=f"payment {payment_intent_id}")
        _audit(session, grant, action=TOP_UP_ACTION, actor="stripe", before=0, now=now)
        return True

    async def take_back_refund(self, session: AsyncSession, *, payment_intent_id: str, refunded_nano_usd: int) -> int:
        """Stripe refunded ``refunded_nano_usd`` in all of the payment: take back what is left of its
        credit, up to what was refunded since last time. Returns the nano-USD taken back now."""
        known = await credit_grant_repository.by_payment_intent(session, payment_intent_id)
        if known is None:
            return 0
        await credit_grant_repository.lock_balance(session, known.account_name)  # the lock order: balance, then grants
        grant = (await credit_grant_repository.lock_grants(session, [known.id]))[0]
        if grant.status == "pending" or refunded_nano_usd <= grant.refunded_nano_usd:
            return 0
        newly = refunded_nano_usd - grant.refunded_nano_usd
        taken = min(newly, grant.remaining_nano_usd)
        before = grant.remaining_nano_usd
        grant.refunded_nano_usd = refunded_nano_usd
        if taken:
            period = period_of(utcnow())
            source_code = codes.extra_credits(grant.source, grant.account_name, grant.period or period)
            await ledger_service.post_many(
                session,
                [
                    Posting(
                        kind=codes.EXTRA_CREDIT_TAKE_BACK,
                        idempotency_key=f"prepaid-refund:{payment_intent_id}:{refunded_nano_usd}",
                        period=period,
                        account_name=grant.account_name,
                        entries=((source_code, taken), (f"{codes.PREPAID_CASH}:{period}", -taken)),
                        memo=f"refund of payment {payment_intent_id}",
                    )
                ],
            )
            grant.remaining_nano_usd -= taken
            await credit_grant_repository.add_to_balances(session, {grant.account_name: -taken})
        if grant.remaining_nano_usd == 0:
            grant.status = "closed"
        await session.flush()
        _audit(session, grant, action=REFUND_ACTION, actor="stripe", before=before, now=utcnow())
        return taken

    async def expire(self, session: AsyncSession, *, now: datetime | None = None) -> int:
        """Post the expiry of what is left of grants whose last period has ended; returns the nano-USD expired."""
        now = now or utcnow()
        today = period_of(now)
        found = await credit_grant_repository.expired_ids(session, before_period=today, limit=_EXPIRED_PER_PASS)
        if not found:
            return 0
        # The lock order: balances, then grants.
        await credit_grant_repository.lock_balances(session, set(found.values()))
        grants = [
            grant
            for grant in await credit_grant_repository.lock_grants(session, found)
            if grant.status == "active"  # expired by another run meanwhile
        ]
        postings = []
        deltas: dict[str, int] = defaultdict(int)
        for grant in grants:
            left = grant.remaining_nano_usd
            if left:
                postings.append(
                    Posting(
                        kind=codes.EXTRA_CREDIT_EXPIRY,
                        idempotency_key=f"credit-expiry:{grant.id}",
                        period=today,
                        account_name=grant.account_name,
                        entries=(
                            (codes.extra_credits(grant.source, grant.account_name, grant.period or today), left),
                            (f"{codes.EXPIRED_CREDITS}:{today}", -left),
                        ),
                        memo=f"{grant.source} {grant.id} expired after {grant.expires_period}",
                    )
                )
                deltas[grant.account_name] -= left
                _audit(session, grant, action=EXPIRY_ACTION, actor="metering", before=left, now=now)
            grant.remaining_nano_usd, grant.status = 0, "closed"
        if postings:
            await ledger_service.post_many(session, postings)
        await credit_grant_repository.add_to_balances(session, deltas)
        await session.flush()
        return -sum(deltas.values())

    async def lock_for_settling(self, session: AsyncSession, names: Iterable[str]) -> dict[str, list[SpendableCredit]]:
        """The spendable grants of ``names``, locked (balances, then grants), per account in spending order.
        Called after the account-period rows are locked."""
        names = sorted(set(names))
        if not names or not await credit_grant_repository.lock_balances(session, names):
            return {}
        pools: dict[str, list[SpendableCredit]] = defaultdict(list)
        for grant in await credit_grant_repository.lock_spendable(session, names):
            pools[grant.account_name].append(
                SpendableCredit(
                    grant.id,
                    codes.extra_credits(grant.source, grant.account_name, grant.period or ""),
                    grant.expires_period,
                    grant.remaining_nano_usd,
                )
            )
        return dict(pools)

    async def record_spending(
        self, session: AsyncSession, *, taken: Mapping[int, int], accounts: Mapping[int, str]
    ) -> None:
        """Write back what settling took from each grant (``taken``: grant id → nano-USD; ``accounts``: its owner)."""
        deltas: dict[str, int] = defaultdict(int)
        for grant_id, amount in taken.items():
            if not amount:
                continue
            grant = await credit_grant_repository.get(session, grant_id)
            if grant is None:
                raise RuntimeError(f"credit grant {grant_id} vanished while locked")
            grant.remaining_nano_usd -= amount
            if grant.remaining_nano_usd == 0:
                grant.status = "closed"
            deltas[accounts[grant_id]] -= amount
        await credit_grant_repository.add_to_balances(session, deltas)

    async def _credit(self, session: AsyncSession, grant: CreditGrant, *, cash_code: str, memo: str) -> None:
        """Post ``grant``'s amount as spendable credit and add it to its account's balance."""
        await credit_grant_repository.lock_balance(session, grant.account_name)
        if grant not in session:
            credit_grant_repository.add(session, grant)
        await session.flush()
        period = grant.period or period_of(utcnow())
        key = f"prepaid:{grant.payment_intent_id}" if grant.source == "prepaid" else f"credit-grant:{grant.id}"
        await ledger_service.post_many(
            session,
            [
                Posting(
                    kind=codes.EXTRA_CREDIT,
                    idempotency_key=key,
                    period=period,
                    account_name=grant.account_name,
                    entries=(
                        (f"{cash_code}:{period}", grant.amount_nano_usd),
                        (codes.extra_credits(grant.source, grant.account_name, period), -grant.amount_nano_usd),
                    ),
                    memo=memo[:256],
                )
            ],
        )
        await credit_grant_repository.add_to_balances(session, {grant.account_name: grant.amount_nano_usd})


credit_grant_service = CreditGrantService()
