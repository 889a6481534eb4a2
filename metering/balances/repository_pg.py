"""The account-period totals' SQL for PostgreSQL: batches in one statement, rows locked in (period, account) order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import orjson
from sqlalchemy import select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import AccountPeriod
from metering.sql import chunks

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

    from metering.balances.repository import BalancesSql, PendingDelta, PeriodTotals

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
# The array type each total travels in to ``save_totals``; amounts and counts are BIGINT[].
_PG_ARRAY_TYPES = {"credits_granted_ahead": "BOOLEAN[]"}


class PostgresBalancesSql:
    async def insert_missing(self, session: AsyncSession, keys: list[tuple[str, str]]) -> None:
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

    async def add_pending_where_granted(
        self, session: AsyncSession, deltas: dict[tuple[str, str], PendingDelta], targets: dict[tuple[str, str], int]
    ) -> set[tuple[str, str]]:
        left_out: set[tuple[str, str]] = set()
        # (period, account): the lock order of every writer (``BalancesRepository.lock_rows``).
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
        return left_out

    async def lock_keys(self, session: AsyncSession, keys: list[tuple[str, str]]) -> None:
        for part in chunks(keys):
            await session.execute(
                select(AccountPeriod.account_name)
                .where(tuple_(AccountPeriod.account_name, AccountPeriod.period).in_(part))
                .order_by(AccountPeriod.period, AccountPeriod.account_name)
                .with_for_update()
            )

    async def save_totals(
        self, session: AsyncSession, rows: Sequence[AccountPeriod | PeriodTotals], totals: Sequence[str]
    ) -> None:
        assignments = ", ".join(f"{name} = v.{name}" for name in totals)
        arrays = ", ".join(f"CAST(:{name} AS {_PG_ARRAY_TYPES.get(name, 'BIGINT[]')})" for name in totals)
        await session.execute(
            text(
                f"UPDATE account_periods AS t SET {assignments} "
                f"FROM unnest(CAST(:accounts AS VARCHAR[]), CAST(:periods AS VARCHAR[]), {arrays}) "
                f"AS v(account_name, period, {', '.join(totals)}) "
                "WHERE t.account_name = v.account_name AND t.period = v.period"
            ),
            {
                "accounts": [r.account_name for r in rows],
                "periods": [r.period for r in rows],
                **{name: [getattr(r, name) for r in rows] for name in totals},
            },
        )


POSTGRES_BALANCES_SQL: BalancesSql = PostgresBalancesSql()
