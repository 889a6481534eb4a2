"""The account-period totals (``account_periods``): the only code that locks, reads for update and writes them.

Every writer locks rows in one order, (period, account), so none deadlocks another: the credit
grants and settling (``lock_rows``, ``save_totals``), ingest's pending estimates
(``add_pending_where_granted``), holds (``lock_keys``, ``add_held``, ``release_held``) and the
step-by-step authorize decision (``lock_period_money``). PostgreSQL's one-statement decision
(``metering.authorize.pg_decision``) locks and writes one row the same way inside its statement:
the fenced exception, tested against the rule it shares (``metering.charging.rule``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, cast

import orjson
from sqlalchemy import bindparam, func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from metering.accounts.repository import dialect_insert
from metering.db import is_sqlite
from metering.models import AccountPeriod, Hold, Provider, UsageRecord
from metering.sql import chunks, sqlite_fetchall

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

EMPTY_ROW = {
    "granted_seats": 0,
    "credits_granted_nano_usd": 0,
    "credits_used_nano_usd": 0,
    "payg_nano_usd": 0,
    "written_off_nano_usd": 0,
    "pending_estimate_nano_usd": 0,
    "held_nano_usd": 0,
    "pending_payg_only_nano_usd": 0,
    "held_payg_only_nano_usd": 0,
}


# The totals this package keeps; ``held_nano_usd`` belongs to holds, which move it by deltas.
TOTALS = (
    "granted_seats",
    "credits_granted_nano_usd",
    "credits_used_nano_usd",
    "payg_nano_usd",
    "written_off_nano_usd",
    "pending_estimate_nano_usd",
    "pending_payg_only_nano_usd",
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

# $1: a JSON array of {account_name, period, delta, target}; the answer is the keys left out.
# ``locked`` is MATERIALIZED, so it runs once and locks rows in its ORDER BY whatever plan the
# UPDATE gets, and the UPDATE writes only rows ``locked`` returned: no lock is taken out of order.
_PG_ADD_PENDING = (
    "WITH batch AS ("
    " SELECT * FROM json_to_recordset($1::json)"
    " AS v(account_name varchar, period varchar, delta bigint, payg_only bigint, target bigint)"
    "), locked AS MATERIALIZED ("
    " SELECT t.account_name, t.period, b.delta, b.payg_only FROM account_periods AS t"
    " JOIN batch AS b ON t.account_name = b.account_name AND t.period = b.period"
    " WHERE t.credits_granted_nano_usd >= b.target"
    " ORDER BY t.period, t.account_name FOR UPDATE OF t"
    "), updated AS ("
    " UPDATE account_periods AS t SET pending_estimate_nano_usd = t.pending_estimate_nano_usd + l.delta,"
    " pending_payg_only_nano_usd = t.pending_payg_only_nano_usd + l.payg_only"
    " FROM locked AS l WHERE t.account_name = l.account_name AND t.period = l.period"
    " RETURNING t.account_name, t.period"
    ") "
    "SELECT b.account_name, b.period FROM batch AS b LEFT JOIN updated AS u"
    " ON u.account_name = b.account_name AND u.period = b.period WHERE u.account_name IS NULL"
)
_PG_KEYS_PER_UPDATE = 20_000
_SQLITE_ADD_PENDING_HEAD = "WITH batch(account_name, period, delta, payg_only, target) AS (VALUES "
_SQLITE_ADD_PENDING_TAIL = (
    ") UPDATE account_periods SET pending_estimate_nano_usd = pending_estimate_nano_usd + batch.delta, "
    "pending_payg_only_nano_usd = pending_payg_only_nano_usd + batch.payg_only "
    "FROM batch WHERE account_periods.account_name = batch.account_name "
    "AND account_periods.period = batch.period AND account_periods.credits_granted_nano_usd >= batch.target "
    "RETURNING account_periods.account_name, account_periods.period"
)
# Five bound values a row, under SQLite's 32,766 per statement.
_SQLITE_KEYS_PER_UPDATE = 5_000


_ADD_HELD = (
    update(AccountPeriod)
    .where(AccountPeriod.account_name == bindparam("h_account_name"), AccountPeriod.period == bindparam("h_period"))
    .values(
        held_nano_usd=AccountPeriod.held_nano_usd + bindparam("h_amount_nano_usd"),
        held_payg_only_nano_usd=AccountPeriod.held_payg_only_nano_usd + bindparam("h_payg_only_nano_usd"),
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
)
_LOCK_PERIOD = (
    select(*_PERIOD_COLUMNS)
    .where(AccountPeriod.account_name == bindparam("account"), AccountPeriod.period == bindparam("period"))
    .with_for_update()
)


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
            await self._insert_missing(session, missing)
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

    async def _insert_missing(self, session: AsyncSession, keys: list[tuple[str, str]]) -> None:
        if is_sqlite(session):
            await session.execute(
                dialect_insert(session, AccountPeriod.__table__).on_conflict_do_nothing(
                    index_elements=["account_name", "period"]
                ),
                [{"account_name": a, "period": p, **EMPTY_ROW} for a, p in keys],
            )
            return
        await session.execute(
            text(
                "INSERT INTO account_periods (account_name, period, granted_seats, credits_granted_nano_usd, "
                "credits_used_nano_usd, payg_nano_usd, written_off_nano_usd, pending_estimate_nano_usd, held_nano_usd, "
                "pending_payg_only_nano_usd, held_payg_only_nano_usd) "
                "SELECT a, p, 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM unnest(CAST(:accounts AS VARCHAR[]), CAST(:periods AS VARCHAR[])) "
                "AS v(a, p) ON CONFLICT (account_name, period) DO NOTHING"
            ),
            {"accounts": [a for a, _ in keys], "periods": [p for _, p in keys]},
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
        left_out: set[tuple[str, str]] = set()
        if is_sqlite(session):
            # Unordered: BEGIN IMMEDIATE already serializes SQLite's writers, so no lock order to keep.
            ordered = list(deltas)
            for part in chunks(ordered, _SQLITE_KEYS_PER_UPDATE):
                params: list[object] = []
                extend = params.extend
                for key in part:
                    delta = deltas[key]
                    extend((key[0], key[1], delta.total, delta.payg_only, targets[key]))
                sql = _SQLITE_ADD_PENDING_HEAD + ", ".join(["(?, ?, ?, ?, ?)"] * len(part)) + _SQLITE_ADD_PENDING_TAIL
                left_out.update(set(part).difference(map(tuple, await sqlite_fetchall(session, sql, params))))
        else:
            ordered = sorted(deltas, key=lambda key: (key[1], key[0]))
            connection = await session.connection()
            for part in chunks(ordered, _PG_KEYS_PER_UPDATE):
                batch = [
                    {
                        "account_name": a,
                        "period": p,
                        "delta": deltas[(a, p)].total,
                        "payg_only": deltas[(a, p)].payg_only,
                        "target": targets[(a, p)],
                    }
                    for a, p in part
                ]
                result = cast(  # the statement returns (account_name, period)
                    "CursorResult[str, str]",
                    await connection.exec_driver_sql(_PG_ADD_PENDING, (orjson.dumps(batch).decode(),)),
                )
                left_out.update((account, period) for account, period in result)
        self._expire_copies(session, ordered)
        return left_out

    async def add_held(
        self, session: AsyncSession, *, account: str, period: str, amount: int, credit_eligible: bool
    ) -> None:
        """A hold placed on a row the caller holds locked: ``held_nano_usd += amount``, and
        ``held_payg_only_nano_usd`` too when its provider is not ``credit_eligible``."""
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
        if not keys or is_sqlite(session):
            return
        for part in chunks(keys):
            await session.execute(
                select(AccountPeriod.account_name)
                .where(tuple_(AccountPeriod.account_name, AccountPeriod.period).in_(part))
                .order_by(AccountPeriod.period, AccountPeriod.account_name)
                .with_for_update()
            )

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
        check); the caller falls back to that when the row is missing or its credits are not granted.
        """
        row = (await (await session.connection()).execute(_LOCK_PERIOD, {"account": account, "period": period})).first()
        return None if row is None else PeriodMoney(*row)

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
        if is_sqlite(session):
            table = AccountPeriod.__table__
            await session.execute(
                update(table)
                .where(table.c.account_name == bindparam("k_account"), table.c.period == bindparam("k_period"))
                .values({name: bindparam(f"v_{name}") for name in TOTALS}),
                [
                    {"k_account": r.account_name, "k_period": r.period, **{f"v_{n}": getattr(r, n) for n in TOTALS}}
                    for r in rows
                ],
            )
        else:
            assignments = ", ".join(f"{name} = v.{name}" for name in TOTALS)
            arrays = ", ".join(f"CAST(:{name} AS BIGINT[])" for name in TOTALS)
            await session.execute(
                text(
                    f"UPDATE account_periods AS t SET {assignments} "
                    f"FROM unnest(CAST(:accounts AS VARCHAR[]), CAST(:periods AS VARCHAR[]), {arrays}) "
                    f"AS v(account_name, period, {', '.join(TOTALS)}) "
                    "WHERE t.account_name = v.account_name AND t.period = v.period"
                ),
                {
                    "accounts": [r.account_name for r in rows],
                    "periods": [r.period for r in rows],
                    **{name: [getattr(r, name) for r in rows] for name in TOTALS},
                },
            )
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
