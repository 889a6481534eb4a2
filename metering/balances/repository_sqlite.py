"""The account-period totals' SQL for SQLite, whose BEGIN IMMEDIATE transactions already serialize writers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import upsert_insert
from metering.models import AccountPeriod
from metering.sql import chunks, sqlite_fetchall

if TYPE_CHECKING:
    from metering.balances.repository import BalancesSql, PendingDelta, PeriodTotals

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


class SqliteBalancesSql:
    async def insert_missing(self, session: AsyncSession, keys: list[tuple[str, str]]) -> None:
        await session.execute(
            upsert_insert(session, AccountPeriod.__table__).on_conflict_do_nothing(
                index_elements=["account_name", "period"]
            ),
            [{"account_name": a, "period": p, **EMPTY_ROW} for a, p in keys],
        )

    async def add_pending_where_granted(
        self, session: AsyncSession, deltas: dict[tuple[str, str], PendingDelta], targets: dict[tuple[str, str], int]
    ) -> set[tuple[str, str]]:
        left_out: set[tuple[str, str]] = set()
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
        return left_out

    async def lock_keys(self, session: AsyncSession, keys: list[tuple[str, str]]) -> None:
        """Nothing to lock: the BEGIN IMMEDIATE transaction already holds SQLite's one write lock."""

    async def save_totals(
        self, session: AsyncSession, rows: Sequence[AccountPeriod | PeriodTotals], totals: Sequence[str]
    ) -> None:
        table = AccountPeriod.__table__
        await session.execute(
            update(table)
            .where(table.c.account_name == bindparam("k_account"), table.c.period == bindparam("k_period"))
            .values({name: bindparam(f"v_{name}") for name in totals}),
            [
                {"k_account": r.account_name, "k_period": r.period, **{f"v_{n}": getattr(r, n) for n in totals}}
                for r in rows
            ],
        )


SQLITE_BALANCES_SQL: BalancesSql = SqliteBalancesSql()
