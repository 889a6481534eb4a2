"""Period credits: each account's ``account_periods`` row, locked, with its credits granted.

Credits are granted once per account and period (SPEC §3) by a ledger transaction keyed
``grant:<account>:<period>``; when an org's seats (or its plan) rise mid-period the
difference is topped up by another keyed transaction. A decrease claws nothing back, and a
month that has ended is never topped up (its credits expired with it): a late record of it
sees the credits it had.

Grants are made ahead: in the last ``credits_grant_ahead_hours`` of a month the grant-credits
job grants next month's, so no request at the month's start waits for a grant (each would
otherwise post one, all at once). A grant made before its period began is marked
(``credits_granted_ahead``) and follows the plan the account has once the period has begun,
as a grant made at the start would: the first thing that locks the row in the period (a
decision, a posting, the job's first run in it) sets the credits to that plan's, topping up
or taking back the difference (``grant:<account>:<period>:at-start:to:<target>``), and
clears the mark; from then on the rules above apply. Anything else is still granted on first
use, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol, cast

from sqlalchemy.ext.asyncio import AsyncSession

from metering.balances.repository import PendingDelta, PeriodTotals, balances_repository
from metering.config import PlanTerms, get_settings
from metering.credits.repository import credits_repository
from metering.ledger import codes
from metering.ledger.service import Posting, ledger_service
from metering.models import Account, AccountPeriod
from metering.periods import current_period, next_period, period_bounds, period_of


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


def periods_to_grant(now: datetime) -> list[str]:
    """The periods the grant-credits job grants at ``now``: the current one, and the next one
    in the current one's last ``credits_grant_ahead_hours``."""
    period = period_of(now)
    ahead = timedelta(hours=get_settings().credits_grant_ahead_hours)
    if ahead and period_bounds(period)[1] - now <= ahead:
        return [period, next_period(period)]
    return [period]


def _needs_grant(row: PeriodTotals | None, target: int, today: str) -> bool:
    """Whether ``_grant`` would change the row: missing, granted ahead in a period that has begun, or below
    its plan's credits in a period still open to top-ups. Read without a lock; ``_grant`` decides under it."""
    if row is None:
        return True
    if row.credits_granted_ahead and row.period <= today:
        return True
    granted = row.credits_granted_nano_usd
    return target > granted and not (granted > 0 and row.period < today)


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
        """Grant ``period`` to ``accounts`` (ahead of it when it has not begun); returns the nano-USD this
        call granted, less what it took back from grants made ahead (plans lowered before the period began).

        The rows are read first without a lock and only those with something to do are locked and
        granted, so a pass that finds everything granted (every hourly run but the first) holds no
        row that authorize waits for.
        """
        plans = get_settings().plans
        today = current_period()
        by_name = {a.name: a for a in accounts}
        keys = [(name, period) for name in by_name]
        existing = await balances_repository.read_totals(session, keys)
        due = [key for key in keys if _needs_grant(existing.get(key), credits_for(by_name[key[0]], plans), today)]
        _, granted = await self._lock_and_grant(session, keys=due, accounts=by_name, plain=True)
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
            granted = row.credits_granted_nano_usd
            if row.credits_granted_ahead and row.period <= today:
                changed.append(row)
                row.credits_granted_ahead = False
                # Never below what was used already (a record may start up to a day ahead of its period).
                target = max(target, row.credits_used_nano_usd)
                if row.period < today or target == granted:
                    continue  # an ended month keeps what it was granted; a plan unchanged keeps its grant
                key = f"grant:{row.account_name}:{row.period}:at-start:to:{target}"
                postings.append(_grant_posting(row, account, target - granted, key, "at the period's start"))
                row.credits_granted_nano_usd = target
                row.granted_seats = account.seats
                continue
            if target <= granted:
                continue
            if granted > 0 and row.period < today:
                continue  # an ended month keeps the credits it was granted
            key = f"grant:{row.account_name}:{row.period}" + ("" if granted == 0 else f":to:{target}")
            postings.append(_grant_posting(row, account, target - granted, key, "ahead" if row.period > today else ""))
            row.credits_granted_nano_usd = target
            row.granted_seats = max(row.granted_seats, account.seats)
            # Granted before its period began: checked against the plan once it has.
            row.credits_granted_ahead = row.period > today
            changed.append(row)
        written = await ledger_service.write_many(session, postings) if postings else None
        if changed:
            await balances_repository.save_totals(session, changed)
        if written is None:
            return 0
        # Last of the grant: every grant of the period moves the one balance of ``credits_expense:<period>``,
        # whose row stays locked from here to the commit, so as little as possible follows it.
        await ledger_service.move_balances(session, written)
        return sum(-p.entries[1][1] for p, posted in zip(postings, written.fresh, strict=True) if posted)


def _grant_posting(row: AccountPeriod | PeriodTotals, account: PlanHolder, amount: int, key: str, when: str) -> Posting:
    """The credits of ``row``'s period moved by ``amount`` (negative: taken back), keyed ``key``."""
    return Posting(
        kind=codes.GRANT,
        idempotency_key=key,
        period=row.period,
        account_name=row.account_name,
        entries=(
            (codes.credits_expense(row.period), amount),
            (codes.credits(row.account_name, row.period), -amount),
        ),
        memo=f"{account.plan} plan, {account.seats} seat(s)" + (f", {when}" if when else ""),
    )


credits_service = CreditsService()
