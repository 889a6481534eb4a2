"""SQL of the ledger: accounts by code, transactions keyed for idempotency, entries, cached balances."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import dialect_insert
from metering.db import is_sqlite
from metering.ledger import codes
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction

# Rows per multi-row statement: stays under the 32,767 bind parameters of asyncpg and SQLite.
CHUNK = 2_000


def chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# PostgreSQL writes many rows as one INSERT … SELECT FROM unnest(arrays): one statement, few parameters.
_TRANSACTION_COLUMNS = (
    "kind", "idempotency_key", "account_name", "provider_id", "period", "original_period",
    "usage_record_id", "memo", "created_at",
)
_PG_TYPES = {name: "VARCHAR" for name in _TRANSACTION_COLUMNS} | {
    "usage_record_id": "BIGINT", "created_at": "TIMESTAMPTZ",
}


class LedgerRepository:
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
                rows.append({"code": code, "kind": parsed.kind, "owner": parsed.owner, "period": parsed.period, "balance_nano_usd": 0})
            if is_sqlite(session):
                await session.execute(
                    dialect_insert(session, LedgerAccount.__table__).on_conflict_do_nothing(index_elements=["code"]), rows
                )
            else:
                await session.execute(
                    text(
                        "INSERT INTO ledger_accounts (code, kind, owner, period, balance_nano_usd) "
                        "SELECT c, k, o, p, 0 FROM unnest(CAST(:codes AS VARCHAR[]), CAST(:kinds AS VARCHAR[]), "
                        "CAST(:owners AS VARCHAR[]), CAST(:periods AS VARCHAR[])) AS v(c, k, o, p) "
                        "ON CONFLICT (code) DO NOTHING"
                    ),
                    {name: [row[key] for row in rows] for name, key in
                     (("codes", "code"), ("kinds", "kind"), ("owners", "owner"), ("periods", "period"))},
                )
        if missing:
            ids.update(await self._ids(session, missing))
        return ids

    async def _ids(self, session: AsyncSession, account_codes: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for part in chunks(account_codes):
            rows = await session.execute(select(LedgerAccount.code, LedgerAccount.id).where(LedgerAccount.code.in_(part)))
            found.update({code: id_ for code, id_ in rows})
        return found

    async def insert_transactions(self, session: AsyncSession, rows: Sequence[dict]) -> dict[str, int]:
        """Insert transactions, skipping any whose idempotency key or usage record already has one.

        Returns ``{idempotency_key: id}`` of the rows inserted now.
        """
        if not rows:
            return {}
        if is_sqlite(session):
            result = await session.execute(
                dialect_insert(session, LedgerTransaction.__table__)
                .on_conflict_do_nothing()
                .returning(LedgerTransaction.__table__.c.idempotency_key, LedgerTransaction.__table__.c.id),
                list(rows),
            )
            return {key: id_ for key, id_ in result}
        columns = [(name, _PG_TYPES[name]) for name in _TRANSACTION_COLUMNS]
        result = await session.execute(
            text(
                f"INSERT INTO ledger_transactions ({', '.join(_TRANSACTION_COLUMNS)}) "
                f"SELECT * FROM unnest({', '.join(f'CAST(:{n} AS {t}[])' for n, t in columns)}) "
                "ON CONFLICT DO NOTHING RETURNING idempotency_key, id"
            ),
            {name: [row[name] for row in rows] for name in _TRANSACTION_COLUMNS},
        )
        return {key: id_ for key, id_ in result}

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
            found.update({record_id: key for record_id, key in rows})
        return found

    async def entries_of(self, session: AsyncSession, transaction_ids: Sequence[int]) -> dict[int, list[tuple[str, int]]]:
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

    async def insert_entries(self, session: AsyncSession, rows: Sequence[dict]) -> None:
        """``rows``: ``{"transaction_id", "ledger_account_id", "amount_nano_usd"}``."""
        if not rows:
            return
        if is_sqlite(session):
            await session.execute(insert(LedgerEntry.__table__), list(rows))
            return
        await session.execute(
            text(
                "INSERT INTO ledger_entries (transaction_id, ledger_account_id, amount_nano_usd) "
                "SELECT * FROM unnest(CAST(:t AS BIGINT[]), CAST(:a AS BIGINT[]), CAST(:m AS BIGINT[]))"
            ),
            {
                "t": [row["transaction_id"] for row in rows],
                "a": [row["ledger_account_id"] for row in rows],
                "m": [row["amount_nano_usd"] for row in rows],
            },
        )

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
        ids = [i for i, _ in items]
        # An UPDATE ... FROM may visit rows in any order; take the row locks in id order first.
        await session.execute(
            text("SELECT id FROM ledger_accounts WHERE id = ANY(CAST(:ids AS BIGINT[])) ORDER BY id FOR UPDATE"),
            {"ids": ids},
        )
        await session.execute(
            text(
                "UPDATE ledger_accounts AS a SET balance_nano_usd = a.balance_nano_usd + v.delta "
                "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:deltas AS BIGINT[])) AS v(id, delta) WHERE a.id = v.id"
            ),
            {"ids": ids, "deltas": [d for _, d in items]},
        )


ledger_repository = LedgerRepository()
