"""Period credits: each account's ``account_periods`` row, locked, with its credits granted lazily.

Credits are granted once per account and period (SPEC §3) by a ledger transaction keyed
``grant:<account>:<period>``; when an org's seats (or its plan) rise mid-period the
difference is topped up by another keyed transaction. A decrease claws nothing back, and a
month that has ended is never topped up (its credits expired with it): a late record of it
sees the credits it had.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, cast

from sqlalchemy.ext.asyncio import AsyncSession

from metering.balances.repository import PendingDelta, PeriodTotals, balances_repository
from metering.config import PlanTerms, get_settings
from metering.credits.repository import credits_repository
from metering.ledger import codes
from metering.ledger.service import Posting, ledger_service
from metering.models import Account, AccountPeriod
from metering.periods import current_period


class PlanHolder(Protocol):
    """What credits depend on: an ``Account``, or the plain terms ingest reads with Core."""

    @property
    def plan(self) -> str: ...

    @property
    def seats(self) -> int: ...


def credits_for(account: PlanHolder, plans: Mapping[str, PlanTerms] | None = None) -> int:
    """The period's credits the account's plan and seats entitle it to (``plans``: the settings',
    passed by callers that ask for many accounts at once)."""
    terms = (get_settings().plans if plans is None else plans).get(account.plan)
    if terms is None:
        return 0
    return terms.credits_nano_usd * (account.seats if terms.per_seat else 1)


def pays_as_you_go(account: PlanHolder) -> bool:
    terms = get_settings().plans.get(account.plan)
    return bool(terms and terms.pay_as_you_go)


class CreditsService:
    async def lock_period(self, session: AsyncSession, *, account: Account, period: str) -> AccountPeriod:
        """The account's row for ``period``, locked for the rest of the transaction, credits granted."""
        return (await self.lock_periods(session, accounts=[account], period=period))[account.name]

    async def lock_periods(
        self, session: AsyncSession, *, accounts: Sequence[Account], period: str
    ) -> dict[str, AccountPeriod]:
        """``lock_period`` for many accounts at once, locked in name order."""
        rows, _ = await self._lock_and_grant(
            session, keys=[(a.name, period) for a in accounts], accounts={a.name: a for a in accounts}
        )
        models = cast(dict[tuple[str, str], AccountPeriod], rows)  # not plain: AccountPeriod models
        return {account: row for (account, _), row in models.items()}

    async def lock_account_periods(
        self,
        session: AsyncSession,
        *,
        keys: Iterable[tuple[str, str]],
        accounts: Mapping[str, PlanHolder],
    ) -> dict[tuple[str, str], PeriodTotals]:
        """Lock ``(account, period)`` rows of any periods; grant credits in those not closed.

        The batched path of ingest and settling: plain rows, written back with
        ``balances_repository.save_totals``.
        """
        rows, _ = await self._lock_and_grant(session, keys=keys, accounts=accounts, plain=True)
        return cast(dict[tuple[str, str], PeriodTotals], rows)  # plain rows are PeriodTotals

    async def add_pending_estimates(
        self, session: AsyncSession, *, deltas: dict[tuple[str, str], PendingDelta], accounts: Mapping[str, PlanHolder]
    ) -> None:
        """Add estimates to the pending totals of ``(account, period)`` rows, creating and granting
        the rows as ``lock_account_periods`` does; a zero delta still creates and grants its row.

        Rows that exist and already hold their plan's credits (nearly all) take one UPDATE; only
        the others go through the lock-and-grant path, so the grant semantics are unchanged.
        """
        if not deltas:
            return
        plans = get_settings().plans
        targets = {key: credits_for(accounts[key[0]], plans) for key in deltas}
        rest = await balances_repository.add_pending_where_granted(session, deltas, targets)
        if not rest:
            return
        rows = await self.lock_account_periods(session, keys=rest, accounts=accounts)
        for key in rest:
            rows[key].pending_estimate_nano_usd += deltas[key].total
            rows[key].pending_payg_only_nano_usd += deltas[key].payg_only
        await balances_repository.save_totals(session, [rows[key] for key in rest])

    async def grant_period(self, session: AsyncSession, *, accounts: Sequence[Account], period: str) -> int:
        """Lock and grant ``period`` for ``accounts``; returns the nano-USD granted by this call."""
        _, granted = await self._lock_and_grant(
            session, keys=[(a.name, period) for a in accounts], accounts={a.name: a for a in accounts}
        )
        return granted

    async def _lock_and_grant(
        self,
        session: AsyncSession,
        *,
        keys: Iterable[tuple[str, str]],
        accounts: Mapping[str, PlanHolder],
        plain: bool = False,
    ) -> tuple[dict[tuple[str, str], AccountPeriod | PeriodTotals], int]:
        rows = await balances_repository.lock_rows(session, keys, plain=plain)
        closed = await credits_repository.closed_periods(session, {period for _, period in rows})
        granted = await self._grant(session, [row for key, row in rows.items() if key[1] not in closed], accounts)
        return rows, granted

    async def _grant(
        self, session: AsyncSession, rows: list[AccountPeriod | PeriodTotals], accounts: Mapping[str, PlanHolder]
    ) -> int:
        postings: list[Posting] = []
        changed: list[AccountPeriod | PeriodTotals] = []
        plans = get_settings().plans
        today = current_period()
        for row in rows:
            account = accounts[row.account_name]
            target = credits_for(account, plans)
            if target <= row.credits_granted_nano_usd:
                continue
            if row.credits_granted_nano_usd > 0 and row.period < today:
                continue  # an ended month keeps the credits it was granted
            amount = target - row.credits_granted_nano_usd
            first = row.credits_granted_nano_usd == 0
            key = f"grant:{row.account_name}:{row.period}" + ("" if first else f":to:{target}")
            postings.append(
                Posting(
                    kind=codes.GRANT,
                    idempotency_key=key,
                    period=row.period,
                    account_name=row.account_name,
                    entries=(
                        (codes.credits_expense(row.period), amount),
                        (codes.credits(row.account_name, row.period), -amount),
                    ),
                    memo=f"{account.plan} plan, {account.seats} seat(s)",
                )
            )
            row.credits_granted_nano_usd = target
            row.granted_seats = max(row.granted_seats, account.seats)
            changed.append(row)
        if not postings:
            return 0
        fresh = await ledger_service.post_many(session, postings)
        await balances_repository.save_totals(session, changed)
        return sum(-p.entries[1][1] for p, posted in zip(postings, fresh, strict=True) if posted)


credits_service = CreditsService()
