"""Adjustments by finance: corrections of an account's bill, each invoiced with the next invoice made for it.

- **Where one is posted.** To the period it corrects while that period is still open (not closed,
  nor earlier than a closed one); otherwise to the first period after the latest closed one. So
  it always lands on the invoice closed next: periods close in order, and a close first closes
  every earlier month with postings. The choice and the posting are made under the close-order
  lock taken shared (``credits_repository.closed_periods``): no close can run in between, so an
  adjustment never lands in a period that is being, or has been, invoiced.
- **The posting.** ``adjustment:<account>:<period>`` +amount against the platform's
  ``adjustments:<period>``, keyed ``adjustment:<id>``; the transaction names the plan the account
  was on (a plan without pay-as-you-go is refused: its accounts are never invoiced).
- **Idempotency.** An ``Idempotency-Key`` names one adjustment of the account: the same key with
  the same body is that adjustment again (nothing posted twice), with another body a conflict.
- **Carries.** An invoice total is never below zero: closing posts the credit it could not take
  as an adjustment of kind ``carry`` into the next period (``AdjustmentService.carry``), moving it
  from the closed period's ledger account to the next one's, so the next invoice takes it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.adjustments.errors import AccountNotInvoiced, AdjustmentKeyReused, InvalidAdjustment
from metering.adjustments.repository import OwedUnderPlan, adjustment_repository
from metering.analytics.bounds import period_problem
from metering.config import get_settings
from metering.credits.repository import credits_repository
from metering.errors import AccountNotFound
from metering.ledger import codes
from metering.ledger.service import Posting, ledger_service
from metering.limits.repository import limit_repository
from metering.models import Adjustment
from metering.periods import next_period, period_of, utcnow

ADJUSTMENT_ACTION = "adjustment.create"
CARRY_ACTION = "adjustment.carry"
# Ledger transaction kind of a carry: it moves an account's credit between two of its own periods.
CARRY_TRANSACTION = "adjustment_carry"
CARRY_ACTOR = "metering"
MAX_REASON = 500
MAX_REQUEST_IDS = 1_000
MAX_REQUEST_ID = 256
MAX_IDEMPOTENCY_KEY = 200
# Far beyond any real correction, and far below where sums of them could overflow a BIGINT.
MAX_AMOUNT_NANO_USD = 10**15
# Stored keys are namespaced: a caller's key can never take the key closing gives a carry.
_CALLER_KEY = "api:"
_CARRY_KEY = "carry:"


@dataclass(frozen=True, slots=True)
class AdjustmentView:
    id: int
    account: str
    kind: str
    amount_nano_usd: int
    # The period it is posted to and invoiced with.
    period: str
    corrects_period: str
    reason: str
    request_ids: list[str]
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AdjustmentMade:
    adjustment: AdjustmentView
    # True when an earlier request with the same Idempotency-Key made it.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a caller asked for, checked: compared field by field with a stored adjustment on a replay."""

    amount_nano_usd: int
    reason: str
    corrects_period: str
    request_ids: list[str] | None

    def matches(self, adjustment: Adjustment) -> bool:
        return (
            adjustment.kind == "adjustment"
            and adjustment.amount_nano_usd == self.amount_nano_usd
            and adjustment.reason == self.reason
            and adjustment.corrects_period == self.corrects_period
            and (adjustment.request_ids or None) == self.request_ids
        )


def _view(adjustment: Adjustment) -> AdjustmentView:
    return AdjustmentView(
        id=adjustment.id,
        account=adjustment.account_name,
        kind=adjustment.kind,
        amount_nano_usd=adjustment.amount_nano_usd,
        period=adjustment.period,
        corrects_period=adjustment.corrects_period,
        reason=adjustment.reason,
        request_ids=[str(request_id) for request_id in adjustment.request_ids or []],
        created_by=adjustment.created_by,
        created_at=adjustment.created_at,
    )


def _visible_ascii(text: str) -> bool:
    return all("!" <= character <= "~" for character in text)


def _checked(
    amount_nano_usd: object, reason: str, corrects_period: str, request_ids: Sequence[str] | None, *, now: datetime
) -> _Asked:
    if (
        isinstance(amount_nano_usd, bool)
        or not isinstance(amount_nano_usd, int)
        or amount_nano_usd == 0
        or abs(amount_nano_usd) > MAX_AMOUNT_NANO_USD
    ):
        raise InvalidAdjustment(
            f"amount_nano_usd must be a whole number from -{MAX_AMOUNT_NANO_USD} to {MAX_AMOUNT_NANO_USD}, not 0"
        )
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidAdjustment(f"reason must be 1 to {MAX_REASON} characters")
    problem = period_problem(corrects_period)
    if problem is not None:
        raise InvalidAdjustment(problem)
    if corrects_period > period_of(now):
        raise InvalidAdjustment(f"period {corrects_period} is in the future: an adjustment corrects a period begun")
    if request_ids is not None:
        if len(request_ids) > MAX_REQUEST_IDS:
            raise InvalidAdjustment(f"request_ids may name at most {MAX_REQUEST_IDS} requests")
        for request_id in request_ids:
            if not 1 <= len(request_id) <= MAX_REQUEST_ID or not request_id.isprintable():
                raise InvalidAdjustment(f"each request id must be 1 to {MAX_REQUEST_ID} printable characters")
    return _Asked(amount_nano_usd, reason, corrects_period, list(request_ids) if request_ids else None)


def _audit(session: AsyncSession, adjustment: Adjustment, *, action: str, before_nano_usd: int, now: datetime) -> None:
    """Who, when, why (the reason), and the period's adjustments before and after."""
    after = {
        "id": adjustment.id,
        "kind": adjustment.kind,
        "amount_nano_usd": adjustment.amount_nano_usd,
        "period": adjustment.period,
        "corrects_period": adjustment.corrects_period,
        "reason": adjustment.reason,
        "request_ids": adjustment.request_ids or [],
        "adjustments_nano_usd": before_nano_usd + adjustment.amount_nano_usd,
    }
    limit_repository.add_audit_event(
        session,
        account=adjustment.account_name,
        actor=adjustment.created_by,
        action=action,
        before=orjson.dumps({"period": adjustment.period, "adjustments_nano_usd": before_nano_usd}).decode(),
        after=orjson.dumps(after).decode(),
        now=now,
    )


class AdjustmentService:
    async def adjust(
        self,
        session: AsyncSession,
        *,
        account_name: str,
        amount_nano_usd: object,
        reason: str,
        corrects_period: str,
        request_ids: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        actor: str,
        now: datetime | None = None,
    ) -> AdjustmentMade:
        """Finance corrects ``account_name``'s bill by ``amount_nano_usd`` (> 0 owed by the account, < 0 in
        its favour) for ``corrects_period``; posted where the next invoice made takes it (module docstring)."""
        now = now or utcnow()
        asked = _checked(amount_nano_usd, reason, corrects_period, request_ids, now=now)
        if idempotency_key is not None and (
            not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY or not _visible_ascii(idempotency_key)
        ):
            raise InvalidAdjustment(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")
        account = await account_repository.get(session, account_name)
        if account is None:
            raise AccountNotFound(f"no account named {account_name!r}", account=account_name)
        key = None if idempotency_key is None else _CALLER_KEY + idempotency_key
        if key is not None:
            earlier = await adjustment_repository.by_key(session, account=account_name, idempotency_key=key)
            if earlier is not None:
                return self._replay(earlier, asked)
        period = await self._posting_period(session, corrects_period=asked.corrects_period)
        # One adjustment of an account at a time (after the close-order lock, the order settling takes its
        # locks in), so the audited before and after are exact and the plan cannot change meanwhile.
        account = await account_repository.lock(session, account_name)
        if account is None:
            raise AccountNotFound(f"no account named {account_name!r}", account=account_name)
        terms = get_settings().plans.get(account.plan)
        if terms is None or not terms.pay_as_you_go:
            raise AccountNotInvoiced(
                f"account {account_name!r} is on plan {account.plan!r}, which has no pay-as-you-go: "
                "it is never invoiced, so an adjustment could not be billed or paid out",
                account=account_name,
            )
        before = await adjustment_repository.posted_to(session, account=account_name, period=period)
        adjustment = await adjustment_repository.insert(
            session,
            {
                "account_name": account_name,
                "kind": "adjustment",
                "amount_nano_usd": asked.amount_nano_usd,
                "period": period,
                "corrects_period": asked.corrects_period,
                "reason": asked.reason,
                "request_ids": asked.request_ids,
                "idempotency_key": key,
                "created_by": actor,
                "created_at": now,
            },
        )
        if adjustment is None:  # another request with the same key committed first
            assert key is not None  # only a key can conflict
            earlier = await adjustment_repository.by_key(session, account=account_name, idempotency_key=key)
            if earlier is None:
                raise RuntimeError(f"adjustment of {account_name!r} with key {key!r} vanished after a conflict")
            return self._replay(earlier, asked)
        await ledger_service.post_many(
            session,
            [
                Posting(
                    kind=codes.ACCOUNT_ADJUSTMENT,
                    idempotency_key=f"adjustment:{adjustment.id}",
                    period=period,
                    account_name=account_name,
                    original_period=asked.corrects_period if asked.corrects_period != period else None,
                    entries=(
                        (codes.adjustment(account_name, period), asked.amount_nano_usd),
                        (f"{codes.ADJUSTMENTS}:{period}", -asked.amount_nano_usd),
                    ),
                    memo=asked.reason[:256],
                    plan=account.plan,
                )
            ],
        )
        _audit(session, adjustment, action=ADJUSTMENT_ACTION, before_nano_usd=before, now=now)
        return AdjustmentMade(_view(adjustment))

    @staticmethod
    def _replay(earlier: Adjustment, asked: _Asked) -> AdjustmentMade:
        if not asked.matches(earlier):
            raise AdjustmentKeyReused(
                f"Idempotency-Key already used for adjustment {earlier.id} of {earlier.account_name!r} "
                "with another body; use a new key for a new adjustment",
                adjustment_id=earlier.id,
            )
        return AdjustmentMade(_view(earlier), replayed=True)

    async def _posting_period(self, session: AsyncSession, *, corrects_period: str) -> str:
        """``corrects_period`` while it is open, else the first period after the latest closed one."""
        if not await credits_repository.closed_periods(session, {corrects_period}):  # takes the close-order lock
            return corrects_period
        latest = await adjustment_repository.latest_closed_period(session)
        if latest is None:  # closed_periods found one: there is a latest
            raise RuntimeError("a closed period vanished under the close-order lock")
        return next_period(latest)

    async def carry(
        self, session: AsyncSession, *, account_name: str, from_period: str, amount_nano_usd: int, now: datetime
    ) -> AdjustmentView:
        """Closing ``from_period``: the credit (``amount_nano_usd`` < 0) its invoice could not take moves to the
        next period, as a ``carry`` adjustment posted there. Once per account and period (keyed)."""
        if amount_nano_usd >= 0:
            raise ValueError(f"only a credit is carried, not {amount_nano_usd} nano-USD")
        period = next_period(from_period)
        key = f"{_CARRY_KEY}{from_period}"
        before = await adjustment_repository.posted_to(session, account=account_name, period=period)
        adjustment = await adjustment_repository.insert(
            session,
            {
                "account_name": account_name,
                "kind": "carry",
                "amount_nano_usd": amount_nano_usd,
                "period": period,
                "corrects_period": from_period,
                "reason": f"credit left over from the {from_period} invoice, which is never below zero",
                "request_ids": None,
                "idempotency_key": key,
                "created_by": CARRY_ACTOR,
                "created_at": now,
            },
        )
        if adjustment is None:
            earlier = await adjustment_repository.by_key(session, account=account_name, idempotency_key=key)
            if earlier is None or earlier.amount_nano_usd != amount_nano_usd:
                raise AdjustmentKeyReused(
                    f"the credit of {account_name!r} carried out of {from_period} was already carried with another amount"
                )
            return _view(earlier)
        await ledger_service.post_many(
            session,
            [
                Posting(
                    kind=CARRY_TRANSACTION,
                    idempotency_key=f"adjustment:{adjustment.id}",
                    period=period,
                    account_name=account_name,
                    original_period=from_period,
                    entries=(
                        (codes.adjustment(account_name, period), amount_nano_usd),
                        (codes.adjustment(account_name, from_period), -amount_nano_usd),
                    ),
                    memo=adjustment.reason,
                )
            ],
        )
        _audit(session, adjustment, action=CARRY_ACTION, before_nano_usd=before, now=now)
        return _view(adjustment)

    async def posted_to(self, session: AsyncSession, *, account_name: str, period: str) -> int:
        """The account's adjustments posted to ``period``, carries into it included (the billing summary)."""
        return await adjustment_repository.posted_to(session, account=account_name, period=period)

    async def ledger_balances(self, session: AsyncSession, *, period: str) -> dict[str, int]:
        """Per account, what ``period``'s invoice is adjusted by (the ledger's sum; zero sums left out)."""
        return await adjustment_repository.ledger_balances(session, period)

    async def request_counts(self, session: AsyncSession, *, period: str) -> dict[str, int]:
        """Per account, how many distinct requests its adjustments invoiced with ``period`` name."""
        return await adjustment_repository.request_counts(session, period)

    async def owed_under_plans_without_payg(
        self, session: AsyncSession, payg_plans: Collection[str], *, period: str | None = None
    ) -> list[OwedUnderPlan]:
        """Adjustments owed while the account's plan had no pay-as-you-go (refused when asked: a breach)."""
        return await adjustment_repository.owed_under_plans_without_payg(session, payg_plans, period=period)

    async def request_ids(self, session: AsyncSession, *, account_name: str, period: str) -> list[str]:
        """The request ids named by the account's adjustments invoiced with ``period``."""
        return await adjustment_repository.request_ids(session, account=account_name, period=period)


adjustment_service = AdjustmentService()
