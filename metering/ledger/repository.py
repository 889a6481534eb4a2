"""SQL of the ledger: accounts by code, transactions keyed for idempotency, entries, cached balances."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import ColumnElement, Select, bindparam, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from metering.db import is_sqlite, upsert_insert
from metering.ledger import codes
from metering.models import Account, LedgerAccount, LedgerEntry, LedgerTransaction, UsageRecord
from metering.sql import chunks

if TYPE_CHECKING:
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

# PostgreSQL writes a batch of postings in one statement: the transactions and their entries
# travel as two JSON documents (one ``orjson.dumps`` each instead of encoding arrays value by
# value), the entries join the transactions inserted now by key, and the answer is the keys
# left out (already posted). ``batch`` is MATERIALIZED so the document is parsed once.
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
    " FROM batch ON CONFLICT DO NOTHING RETURNING id, idempotency_key"
    "), entries AS ("
    " INSERT INTO ledger_entries (transaction_id, ledger_account_id, amount_nano_usd)"
    " SELECT i.id, e.a, e.m FROM json_to_recordset($2::json) AS e(n bigint, k varchar, a bigint, m bigint)"
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


def select_entries(
    *columns: ColumnElement[Any] | InstrumentedAttribute[Any], usage_records: bool = False
) -> Select[*tuple[Any, ...]]:
    """SELECT ``columns`` of ledger entries, each joined to its transaction and its ledger account.

    With ``usage_records``, also to the usage record its transaction charges for (an outer join:
    NULLs for a transaction of no request, such as a credit grant). For the read-only queries of
    reports and checks; callers add their own filters, grouping and order.
    """
    statement = (
        select(*columns)
        .select_from(LedgerEntry)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.ledger_account_id)
    )
    if usage_records:
        statement = statement.outerjoin(UsageRecord, UsageRecord.id == LedgerTransaction.usage_record_id)
    return statement


@dataclass(frozen=True, slots=True)
class ChargeUnderPlan:
    """Pay-as-you-go charged to a receivable by costs posted while its account was on ``plan``."""

    account_name: str
    code: str
    plan: str | None
    amount_nano_usd: int


class LedgerRepository:
    async def charges_under_plans_without_payg(
        self, session: AsyncSession, payg_plans: Collection[str], *, period: str | None = None
    ) -> list[ChargeUnderPlan]:
        """Receivable charges posted under a plan not in ``payg_plans``, per receivable and plan; of
        one period's receivables, or of all. A cost names the plan it was posted under; any other
        posting, its account's plan of today (None when there is no such account)."""
        plan = func.coalesce(LedgerTransaction.plan, Account.plan)
        total = func.sum(LedgerEntry.amount_nano_usd)
        statement = (
            select_entries(LedgerAccount.owner, LedgerAccount.code, plan, total)
            .outerjoin(Account, Account.name == LedgerAccount.owner)
            .where(LedgerAccount.kind == codes.RECEIVABLE, or_(plan.is_(None), plan.not_in(list(payg_plans))))
            .group_by(LedgerAccount.owner, LedgerAccount.code, plan)
            .having(total != 0)
            .order_by(LedgerAccount.owner, LedgerAccount.code)
        )
        if period is not None:
            statement = statement.where(LedgerAccount.period == period)
        rows = await session.execute(statement)
        return [ChargeUnderPlan(owner, code, plan, int(amount)) for owner, code, plan, amount in rows]

    async def ensure_accounts(self, session: AsyncSession, account_codes: Iterable[str]) -> dict[str, int]:
        """Ids of the ledger accounts named, created at balance 0 when missing.

        Codes are inserted in sorted order so concurrent writers wait on each other in one order.
        """
        wanted = sorted(set(account_codes))
        if not wanted:
            return {}
        ids = await self._ids(session, wanted)
        missing = [code for code in wanted if code not in ids]
        if missing:
            rows = []
            for code in missing:
                parsed = codes.parse(code)
                rows.append(
                    {
                        "code": code,
                        "kind": parsed.kind,
                        "owner": parsed.owner,
                        "period": parsed.period,
                        "balance_nano_usd": 0,
                    }
                )
            if is_sqlite(session):
                await session.execute(
                    upsert_insert(session, LedgerAccount.__table__).on_conflict_do_nothing(index_elements=["code"]),
                    rows,
                )
            else:
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
        if missing:
            ids.update(await self._ids(session, missing))
        return ids

    async def account_ids(self, session: AsyncSession, account_codes: Iterable[str]) -> dict[str, int]:
        """Ids of the ledger accounts named that exist."""
        return await self._ids(session, sorted(set(account_codes)))

    async def _ids(self, session: AsyncSession, account_codes: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for part in chunks(account_codes):
            rows = await session.execute(
                select(LedgerAccount.code, LedgerAccount.id).where(LedgerAccount.code.in_(part))
            )
            found.update({code: id_ for code, id_ in rows})
        return found

    async def insert_postings(
        self,
        session: AsyncSession,
        postings: Sequence[Posting],
        entries: Sequence[tuple[str, int, int]],
        *,
        created_at: datetime,
    ) -> set[str]:
        """Insert transactions (``Posting``-like objects, distinct keys) and, for those inserted
        now, their ``(idempotency_key, ledger_account_id, amount)`` entries.

        A transaction whose idempotency key or usage record already has one is skipped with its
        entries; returns the keys skipped.
        """
        if not postings:
            return set()
        if is_sqlite(session):
            return await self._insert_postings_sqlite(session, postings, entries, created_at=created_at)
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

    async def _insert_postings_sqlite(
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
        rows = [
            {"transaction_id": inserted[key], "ledger_account_id": account_id, "amount_nano_usd": amount}
            for key, account_id, amount in entries
            if key in inserted
        ]
        if rows:
            await session.execute(insert(LedgerEntry.__table__), rows)
        return {p.idempotency_key for p in postings if p.idempotency_key not in inserted}

    async def transactions_by_key(self, session: AsyncSession, keys: Sequence[str]) -> dict[str, LedgerTransaction]:
        found: dict[str, LedgerTransaction] = {}
        for part in chunks(keys):
            rows = await session.scalars(select(LedgerTransaction).where(LedgerTransaction.idempotency_key.in_(part)))
            found.update({row.idempotency_key: row for row in rows})
        return found

    async def transactions_by_usage_record(self, session: AsyncSession, record_ids: Sequence[int]) -> dict[int, str]:
        """``{usage_record_id: idempotency_key}`` of the cost transactions already posted for them."""
        found: dict[int, str] = {}
        for part in chunks(record_ids):
            rows = await session.execute(
                select(LedgerTransaction.usage_record_id, LedgerTransaction.idempotency_key).where(
                    LedgerTransaction.usage_record_id.in_(part)
                )
            )
            # Never None: NULL is in no IN list.
            found.update({record_id: key for record_id, key in rows if record_id is not None})
        return found

    async def entries_of(
        self, session: AsyncSession, transaction_ids: Sequence[int]
    ) -> dict[int, list[tuple[str, int]]]:
        """``{transaction_id: [(code, amount), ...]}``."""
        found: dict[int, list[tuple[str, int]]] = {id_: [] for id_ in transaction_ids}
        for part in chunks(transaction_ids):
            rows = await session.execute(
                select(LedgerEntry.transaction_id, LedgerAccount.code, LedgerEntry.amount_nano_usd)
                .join(LedgerAccount, LedgerAccount.id == LedgerEntry.ledger_account_id)
                .where(LedgerEntry.transaction_id.in_(part))
            )
            for transaction_id, code, amount in rows:
                found[transaction_id].append((code, amount))
        return found

    async def add_to_balances(self, session: AsyncSession, deltas: dict[int, int]) -> None:
        """Add each delta to its account's cached balance, in id order (one lock order for everyone)."""
        items = sorted((id_, delta) for id_, delta in deltas.items() if delta)
        if not items:
            return
        if is_sqlite(session):
            # One writer at a time on SQLite: an executemany is as safe and much simpler.
            table = LedgerAccount.__table__
            statement = (
                update(table)
                .where(table.c.id == bindparam("b_id"))
                .values(balance_nano_usd=table.c.balance_nano_usd + bindparam("b_delta"))
            )
            await session.execute(statement, [{"b_id": i, "b_delta": d} for i, d in items])
            return
        connection = await session.connection()
        await connection.exec_driver_sql(_PG_ADD_TO_BALANCES, ([i for i, _ in items], [d for _, d in items]))


ledger_repository = LedgerRepository()
