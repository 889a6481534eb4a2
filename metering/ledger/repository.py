"""SQL of the ledger: accounts by code, transactions keyed for idempotency, entries, cached balances."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from metering.db import by_dialect
from metering.ledger import codes
from metering.ledger.repository_pg import POSTGRES_LEDGER_SQL
from metering.ledger.repository_sqlite import SQLITE_LEDGER_SQL
from metering.models import Account, LedgerAccount, LedgerEntry, LedgerTransaction, UsageRecord
from metering.sql import chunks

if TYPE_CHECKING:
    from metering.ledger.service import Posting


class LedgerSql(Protocol):
    """The ledger's SQL that differs between SQLite and PostgreSQL."""

    async def insert_accounts(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Insert ledger account rows (code, kind, owner, period, balance 0) in the order given, skipping codes
        that exist."""
        ...

    async def insert_postings(
        self,
        session: AsyncSession,
        postings: Sequence[Posting],
        entries: Sequence[tuple[str, int, int]],
        *,
        created_at: datetime,
    ) -> set[str]:
        """``LedgerRepository.insert_postings`` for a batch of at least one posting."""
        ...

    async def add_to_balances(self, session: AsyncSession, items: list[tuple[int, int]]) -> None:
        """Add each ``(ledger_account_id, delta)``, sorted by id, to its account's cached balance."""
        ...


def _sql(session: AsyncSession) -> LedgerSql:
    return by_dialect(session, sqlite=SQLITE_LEDGER_SQL, postgresql=POSTGRES_LEDGER_SQL)


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
            await _sql(session).insert_accounts(session, rows)
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
        return await _sql(session).insert_postings(session, postings, entries, created_at=created_at)

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
        await _sql(session).add_to_balances(session, items)


ledger_repository = LedgerRepository()
