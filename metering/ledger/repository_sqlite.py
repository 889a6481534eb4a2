"""The ledger's SQL for SQLite: plain multi-row statements, since BEGIN IMMEDIATE already serializes writers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import upsert_insert
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction

if TYPE_CHECKING:
    from metering.ledger.repository import LedgerSql
    from metering.ledger.service import Posting

_TRANSACTION_COLUMNS = (
    "kind",
    "idempotency_key",
    "account_name",
    "provider_id",
    "period",
    "original_period",
    "usage_record_id",
    "memo",
    "plan",
)


class SqliteLedgerSql:
    async def insert_accounts(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        await session.execute(
            upsert_insert(session, LedgerAccount.__table__).on_conflict_do_nothing(index_elements=["code"]),
            rows,
        )

    async def insert_postings(
        self,
        session: AsyncSession,
        postings: Sequence[Posting],
        entries: Sequence[tuple[str, int, int]],
        *,
        created_at: datetime,
    ) -> set[str]:
        table = LedgerTransaction.__table__
        result = await session.execute(
            upsert_insert(session, table).on_conflict_do_nothing().returning(table.c.idempotency_key, table.c.id),
            [{name: getattr(p, name) for name in _TRANSACTION_COLUMNS} | {"created_at": created_at} for p in postings],
        )
        inserted = {key: id_ for key, id_ in result}
        # Each entry takes its transaction's period (``LedgerEntry.period``).
        periods = {p.idempotency_key: p.period for p in postings}
        rows = [
            {
                "transaction_id": inserted[key],
                "ledger_account_id": account_id,
                "amount_nano_usd": amount,
                "period": periods[key],
            }
            for key, account_id, amount in entries
            if key in inserted
        ]
        if rows:
            await session.execute(insert(LedgerEntry.__table__), rows)
        return {p.idempotency_key for p in postings if p.idempotency_key not in inserted}

    async def add_to_balances(self, session: AsyncSession, items: list[tuple[int, int]]) -> None:
        # One writer at a time on SQLite: an executemany is as safe and much simpler.
        table = LedgerAccount.__table__
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(balance_nano_usd=table.c.balance_nano_usd + bindparam("b_delta"))
        )
        await session.execute(statement, [{"b_id": i, "b_delta": d} for i, d in items])


SQLITE_LEDGER_SQL: LedgerSql = SqliteLedgerSql()
