"""The ledger's SQL for PostgreSQL: each batch in one statement, with its rows locked in one order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from metering.ledger.repository import LedgerSql
    from metering.ledger.service import Posting

# PostgreSQL writes a batch of postings in one statement: the transactions and their entries
# travel as two JSON documents (one ``orjson.dumps`` each instead of encoding arrays value by
# value), the entries join the transactions inserted now by key, and the answer is the keys
# left out (already posted). ``batch`` is MATERIALIZED so the document is parsed once. Each entry
# takes its transaction's period, the month ``ledger_entries`` is partitioned by.
_PG_INSERT_POSTINGS = (
    "WITH batch AS MATERIALIZED ("
    " SELECT * FROM json_to_recordset($1::json) AS v(kind varchar, idempotency_key varchar, account_name varchar,"
    " provider_id varchar, period varchar, original_period varchar, usage_record_id bigint, memo varchar,"
    " plan varchar)"
    "), inserted AS ("
    " INSERT INTO ledger_transactions (kind, idempotency_key, account_name, provider_id, period, original_period,"
    " usage_record_id, memo, plan, created_at)"
    " SELECT kind, idempotency_key, account_name, provider_id, period, original_period, usage_record_id, memo, plan,"
    " $3"
    " FROM batch ON CONFLICT DO NOTHING RETURNING id, idempotency_key, period"
    "), entries AS ("
    " INSERT INTO ledger_entries (transaction_id, ledger_account_id, amount_nano_usd, period)"
    " SELECT i.id, e.a, e.m, i.period FROM json_to_recordset($2::json) AS e(n bigint, k varchar, a bigint, m bigint)"
    " JOIN inserted AS i ON i.idempotency_key = e.k ORDER BY e.n"
    ") "
    "SELECT b.idempotency_key FROM batch AS b"
    " WHERE NOT EXISTS (SELECT 1 FROM inserted AS i WHERE i.idempotency_key = b.idempotency_key)"
)
# Balances: the rows are locked in id order first (MATERIALIZED, so whatever plan the UPDATE
# gets), FOR NO KEY UPDATE so that the foreign-key checks of other writers' entries, which
# take KEY SHARE locks on these rows, neither block it nor deadlock with it.
_PG_ADD_TO_BALANCES = (
    "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS v(id, delta)), "
    "locked AS MATERIALIZED (SELECT a.id FROM ledger_accounts AS a JOIN v ON a.id = v.id"
    " ORDER BY a.id FOR NO KEY UPDATE OF a) "
    "UPDATE ledger_accounts AS a SET balance_nano_usd = a.balance_nano_usd + v.delta"
    " FROM locked AS l JOIN v ON v.id = l.id WHERE a.id = l.id"
)


class PostgresLedgerSql:
    async def insert_accounts(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        await session.execute(
            text(
                "INSERT INTO ledger_accounts (code, kind, owner, period, balance_nano_usd) "
                "SELECT c, k, o, p, 0 FROM unnest(CAST(:codes AS VARCHAR[]), CAST(:kinds AS VARCHAR[]), "
                "CAST(:owners AS VARCHAR[]), CAST(:periods AS VARCHAR[])) AS v(c, k, o, p) "
                "ON CONFLICT (code) DO NOTHING"
            ),
            {
                name: [row[key] for row in rows]
                for name, key in (
                    ("codes", "code"),
                    ("kinds", "kind"),
                    ("owners", "owner"),
                    ("periods", "period"),
                )
            },
        )

    async def insert_postings(
        self,
        session: AsyncSession,
        postings: Sequence[Posting],
        entries: Sequence[tuple[str, int, int]],
        *,
        created_at: datetime,
    ) -> set[str]:
        connection = await session.connection()
        result = await connection.exec_driver_sql(
            _PG_INSERT_POSTINGS,
            (
                orjson.dumps(postings).decode(),
                orjson.dumps([{"n": n, "k": k, "a": a, "m": m} for n, (k, a, m) in enumerate(entries)]).decode(),
                created_at,
            ),
        )
        return {key for (key,) in result}

    async def add_to_balances(self, session: AsyncSession, items: list[tuple[int, int]]) -> None:
        connection = await session.connection()
        await connection.exec_driver_sql(_PG_ADD_TO_BALANCES, ([i for i, _ in items], [d for _, d in items]))


POSTGRES_LEDGER_SQL: LedgerSql = PostgresLedgerSql()
