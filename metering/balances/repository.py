"""The account-period totals (``account_periods``): the only code that locks, reads for update and writes them.

Every writer locks rows in one order, (period, account), so none deadlocks another: the credit
grants and settling (``lock_rows``, ``save_totals``), ingest's pending estimates
(``add_pending_where_granted``), holds (``lock_keys``, ``add_held``, ``release_held``) and the
step-by-step authorize decision (``lock_period_money``). PostgreSQL's one-statement decision
(``metering.hot_path.pg_decision``) locks and writes one row the same way inside its statement:
the fenced exception, tested against the rule it shares (``metering.charging.rule``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, cast

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from metering.balances.repository_pg import POSTGRES_BALANCES_SQL
from metering.balances.repository_sqlite import SQLITE_BALANCES_SQL
from metering.db import by_dialect
from metering.models import AccountPeriod, Hold, Provider, UsageRecord
from metering.sql import chunks

# The columns this package keeps; ``held_nano_usd`` belongs to holds, which move it by deltas.
TOTALS = (
    "granted_seats",
    "credits_granted_nano_usd",
    "credits_used_nano_usd",
    "payg_nano_usd",
    "written_off_nano_usd",
    "pending_estimate_nano_usd",
    "pending_payg_only_nano_usd",
    "credits_granted_ahead",
)


@dataclass(slots=True)
class PeriodTotals:
    """An ``account_periods`` row as plain values: the batched paths lock hundreds of rows per
    call and need neither ORM identity nor change tracking for them."""

    account_name: str
    period: str
    granted_seats: int
    credits_granted_nano_usd: int
    credits_used_nano_usd: int
    payg_nano_usd: int
    written_off_nano_usd: int
    pending_estimate_nano_usd: int
    held_nano_usd: int
    pending_payg_only_nano_usd: int
    held_payg_only_nano_usd: int
    credits_granted_ahead: bool = False


@dataclass(slots=True)
class PendingDelta:
    """Estimates to add to one account period's pending total, and the part of them for providers
    that are not credit-eligible (``pending_payg_only_nano_usd``)."""

    total: int = 0
    payg_only: int = 0

    def add(self, estimate: int, *, payg_only: bool) -> None:
        self.total += estimate
        if payg_only:
            self.payg_only += estimate


_COLUMNS = tuple(field.name for field in fields(PeriodTotals))

_ADD_HELD = (
    update(AccountPeriod)
    .where(AccountPeriod.account_name == bindparam("h_account_name"), AccountPeriod.period == bindparam("h_period"))
    .values(
        held_nano_usd=AccountPeriod.held_nano_usd + bindparam("h_amount_nano_usd"),
        held_payg_only_nano_usd=AccountPeriod.held_payg_only_nano_usd + bindparam("h_payg_only_nano_usd"),
        # A hold on credits granted ahead that still match the plan confirms them (``metering.credits.service``).
        credits_granted_ahead=False,
    )
)


@dataclass(frozen=True, slots=True)
class PeriodMoney:
    """The money columns of a locked ``account_periods`` row."""

    account_name: str
    period: str
    credits_granted_nano_usd: int
    credits_used_nano_usd: int
    payg_nano_usd: int
    pending_estimate_nano_usd: int
    held_nano_usd: int
    pending_payg_only_nano_usd: int
    held_payg_only_nano_usd: int
    # The credits were granted before the period began and are not yet checked against the plan.
    credits_granted_ahead: bool = False

    @classmethod
    def of(cls, row: AccountPeriod) -> PeriodMoney:
        return cls(
            row.account_name,
            row.period,
            row.credits_granted_nano_usd,
            row.credits_used_nano_usd,
            row.payg_nano_usd,
            row.pending_estimate_nano_usd,
            row.held_nano_usd,
            row.pending_payg_only_nano_usd,
            row.held_payg_only_nano_usd,
            row.credits_granted_ahead,
        )


_PERIOD_COLUMNS = (
    AccountPeriod.account_name,
    AccountPeriod.period,
    AccountPeriod.credits_granted_nano_usd,
    AccountPeriod.credits_used_nano_usd,
    AccountPeriod.payg_nano_usd,
    AccountPeriod.pending_estimate_nano_usd,
    AccountPeriod.held_nano_usd,
    AccountPeriod.pending_payg_only_nano_usd,
    AccountPeriod.held_payg_only_nano_usd,
    AccountPeriod.credits_granted_ahead,
)
_LOCK_PERIOD = (
    select(*_PERIOD_COLUMNS)
    .where(AccountPeriod.account_name == bindparam("account"), AccountPeriod.period == bindparam("period"))
    .with_for_update()
)


class BalancesSql(Protocol):
    """The SQL of the account-period totals that differs between SQLite and PostgreSQL."""

    async def insert_missing(self, session: AsyncSession, keys: list[tuple[str, str]]) -> None:
        """Create the rows of ``(account, period)`` keys with every total 0, skipping those that exist."""
        ...

    async def add_pending_where_granted(
        self, session: AsyncSession, deltas: dict[tuple[str, str], PendingDelta], targets: dict[tuple[str, str], int]
    ) -> set[tuple[str, str]]:
        """``BalancesRepository.add_pending_where_granted`` without the expiry of ORM copies."""
        ...

    async def lock_keys(self, session: AsyncSession, keys: list[tuple[str, str]]) -> None:
        """Lock the rows of ``keys``, given sorted in (period, account) order, until the transaction ends."""
        ...

    async def save_totals(
        self, session: AsyncSession, rows: Sequence[AccountPeriod | PeriodTotals], totals: Sequence[str]
    ) -> None:
        """Write the ``totals`` columns of ``rows`` (distinct, locked by the caller) in one statement."""
        ...


def _sql(session: AsyncSession) -> BalancesSql:
    return by_dialect(session, sqlite=SQLITE_BALANCES_SQL, postgresql=POSTGRES_BALANCES_SQL)


class BalancesRepository:
    async def lock_rows(
        self, session: AsyncSession, keys: Iterable[tuple[str, str]], *, plain: bool = False
    ) -> dict[tuple[str, str], AccountPeriod | PeriodTotals]:
        """The ``account_periods`` rows of ``(account, period)`` keys, created when missing, locked.

        PostgreSQL: SELECT … FOR UPDATE in (period, account) order, the one lock order every
        writer uses; rows still missing are then created (INSERT … ON CONFLICT DO NOTHING) and
        locked the same way. SQLite: the BEGIN IMMEDIATE transaction is the lock.
        Rows come back fresh from the database even if the session already holds them: ORM
        objects, or ``PeriodTotals`` when ``plain``.
        """
        ordered = sorted(set(keys), key=lambda key: (key[1], key[0]))
        if not ordered:
            return {}
        # Most rows exist (an account's first request of a period creates its row): lock those
        # first, then create and lock only the missing ones.
        rows = await self._select_rows(session, ordered, plain=plain)
        missing = [key for key in ordered if key not in rows]
        if missing:
            await _sql(session).insert_missing(session, missing)
            rows.update(await self._select_rows(session, missing, plain=plain))
        return rows

    async def read_totals(
        self, session: AsyncSession, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], PeriodTotals]:
        """The existing ``account_periods`` rows of ``(account, period)`` keys, read without a lock:
        what a writer plans from before it locks them (``lock_rows``) and checks its plan against."""
        ordered = sorted(set(keys), key=lambda key: (key[1], key[0]))
        if not ordered:
            return {}
        # Plain rows are PeriodTotals.
        return cast(
            dict[tuple[str, str], PeriodTotals], await self._select_rows(session, ordered, plain=True, lock=False)
        )

    async def _select_rows(
        self, session: AsyncSession, ordered: list[tuple[str, str]], *, plain: bool, lock: bool = True
    ) -> dict[tuple[str, str], AccountPeriod | PeriodTotals]:
        by_period: dict[str, list[str]] = defaultdict(list)
        for account, period in ordered:
            by_period[period].append(account)
        rows: dict[tuple[str, str], AccountPeriod | PeriodTotals] = {}
        table = AccountPeriod.__table__
        for period in sorted(by_period):
            for part in chunks(by_period[period]):
                if plain:
                    statement = (
                        select(*(table.c[name] for name in _COLUMNS))
                        .where(table.c.period == period, table.c.account_name.in_(part))
                        .order_by(table.c.account_name)
                    )
                    result = await session.execute(statement.with_for_update() if lock else statement)
                    rows.update({(r[0], r[1]): PeriodTotals(*r) for r in result})
                    continue
                models = await session.scalars(
                    select(AccountPeriod)
                    .where(AccountPeriod.period == period, AccountPeriod.account_name.in_(part))
                    .order_by(AccountPeriod.account_name)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
                rows.update({(row.account_name, row.period): row for row in models})
        return rows

    async def add_pending_where_granted(
        self, session: AsyncSession, deltas: dict[tuple[str, str], PendingDelta], targets: dict[tuple[str, str], int]
    ) -> set[tuple[str, str]]:
        """``pending_estimate_nano_usd += delta`` (and its payg-only part) on the rows that exist and hold at least their
        target credits already; returns the other keys, which need the locked grant path.

        One statement per chunk instead of lock, read and write back: ingest's hot path.
        PostgreSQL: the rows are locked first in (period, account) order, the lock order of every
        writer (``lock_rows``), and the UPDATE touches only rows that lock already holds.
        """
        left_out = await _sql(session).add_pending_where_granted(session, deltas, targets)
        self._expire_copies(session, deltas)
        return left_out

    async def add_held(
        self, session: AsyncSession, *, account: str, period: str, amount: int, credit_eligible: bool
    ) -> None:
        """A hold placed on a row the caller holds locked: ``held_nano_usd += amount``, and
        ``held_payg_only_nano_usd`` too when its provider is not ``credit_eligible``; credits granted
        ahead that the caller found matching the plan are confirmed."""
        await (await session.connection()).execute(
            _ADD_HELD,
            {
                "h_account_name": account,
                "h_period": period,
                "h_amount_nano_usd": amount,
                "h_payg_only_nano_usd": 0 if credit_eligible else amount,
            },
        )

    async def lock_keys(self, session: AsyncSession, keys: Iterable[tuple[str, str]]) -> None:
        """Row-lock the (account, period) rows in (period, account) order (SQLite: BEGIN IMMEDIATE serializes)."""
        keys = sorted(set(keys), key=lambda key: (key[1], key[0]))
        if keys:
            await _sql(session).lock_keys(session, keys)

    async def release_held(self, session: AsyncSession, amounts: dict[tuple[str, str], tuple[int, int]]) -> None:
        """``held_nano_usd -= amount`` and ``held_payg_only_nano_usd -= payg_only`` per (account, period)
        → (amount, payg_only), in lock order."""
        for (account, period), (amount, payg_only) in sorted(
            amounts.items(), key=lambda item: (item[0][1], item[0][0])
        ):
            if amount:
                await session.execute(
                    update(AccountPeriod)
                    .where(AccountPeriod.account_name == account, AccountPeriod.period == period)
                    .values(
                        held_nano_usd=AccountPeriod.held_nano_usd - amount,
                        held_payg_only_nano_usd=AccountPeriod.held_payg_only_nano_usd - payg_only,
                    )
                    .execution_options(synchronize_session=False)
                )

    async def lock_period_money(self, session: AsyncSession, *, account: str, period: str) -> PeriodMoney | None:
        """The account's period row, locked, when it exists: the step-by-step decision's fast path.

        One statement where ``credits_service.lock_period`` needs three (create, lock, closed-period
        check); the caller falls back to that when the row is missing, its credits are not granted,
        or they were granted ahead and are not yet checked against the plan.
        """
        row = (await (await session.connection()).execute(_LOCK_PERIOD, {"account": account, "period": period})).first()
        return None if row is None else PeriodMoney(**row._mapping)

    async def recount_payg_only(self, session: AsyncSession, *, provider_id: str) -> None:
        """Recompute the payg-only in-flight totals of every account period with a hold or a pending
        record of ``provider_id``, whose credit eligibility just changed (a rare registration change)."""
        keys = set(
            (
                await session.execute(
                    select(Hold.account_name, Hold.period)
                    .where(Hold.provider_id == provider_id, Hold.status == "held")
                    .distinct()
                )
            ).all()
        ) | set(
            (
                await session.execute(
                    select(UsageRecord.billing_account, UsageRecord.period)
                    .where(UsageRecord.provider_id == provider_id, UsageRecord.status == "pending")
                    .distinct()
                )
            ).all()
        )
        rows = await self.lock_rows(session, [(account, period) for account, period in keys], plain=True)
        for account, period in rows:
            pending = (
                select(func.coalesce(func.sum(UsageRecord.estimate_nano_usd), 0))
                .join(Provider, Provider.id == UsageRecord.provider_id)
                .where(
                    UsageRecord.billing_account == account,
                    UsageRecord.period == period,
                    UsageRecord.status == "pending",
                    Provider.credit_eligible.is_(False),
                )
            )
            held = (
                select(func.coalesce(func.sum(Hold.amount_nano_usd), 0))
                .join(Provider, Provider.id == Hold.provider_id)
                .where(
                    Hold.account_name == account,
                    Hold.period == period,
                    Hold.status == "held",
                    Provider.credit_eligible.is_(False),
                )
            )
            await session.execute(
                update(AccountPeriod)
                .where(AccountPeriod.account_name == account, AccountPeriod.period == period)
                .values(
                    pending_payg_only_nano_usd=pending.scalar_subquery(), held_payg_only_nano_usd=held.scalar_subquery()
                )
                .execution_options(synchronize_session=False)
            )
        self._expire_copies(session, rows)

    async def save_totals(self, session: AsyncSession, rows: list[AccountPeriod | PeriodTotals]) -> None:
        """Write the ``TOTALS`` of rows this transaction holds locked, in one statement.

        ORM objects are marked clean (a flush would issue one UPDATE per row); an ORM copy of a
        plain row the session may hold is expired, so it reloads what was written.
        """
        rows = sorted({(r.period, r.account_name): r for r in rows}.values(), key=lambda r: (r.period, r.account_name))
        if not rows:
            return
        await _sql(session).save_totals(session, rows, TOTALS)
        plain = []
        for row in rows:
            if isinstance(row, AccountPeriod):
                for name in TOTALS:
                    set_committed_value(row, name, getattr(row, name))
            else:
                plain.append((row.account_name, row.period))
        self._expire_copies(session, plain)

    def _expire_copies(self, session: AsyncSession, keys: Iterable[tuple[str, str]]) -> None:
        """Expire the ORM copies the session holds of rows written by plain SQL, so they reload."""
        identity_map = session.identity_map
        if not identity_map:
            return
        mapper = AccountPeriod.__mapper__
        for key in keys:
            held = identity_map.get(mapper.identity_key_from_primary_key(key))
            if held is not None:
                session.expire(held)


balances_repository = BalancesRepository()
