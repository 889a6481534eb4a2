"""SQL of usage accounting: estimates of new records and the exactly-once moves out of ``pending``.

Every move is conditional on ``status = 'pending'``, so of two workers settling one
request only one sees it move; the other is told it was not pending. The moves and the
estimates differ between the engines (``repository_sqlite``, ``repository_pg``); both keep
``AccountingSql``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import by_dialect
from metering.models import UsageRecord
from metering.sql import chunks
from metering.usage.repository_pg import POSTGRES_ACCOUNTING_SQL
from metering.usage.repository_sqlite import SQLITE_ACCOUNTING_SQL
from metering.usage.rows import SettledRow as SettledRow


class AccountingSql(Protocol):
    """The writes of accounting that differ between SQLite and PostgreSQL; callers pass no empty batch."""

    async def set_estimates(self, session: AsyncSession, items: Sequence[tuple[int, int]]) -> None:
        """Each ``(id, estimate)`` of ``items`` (in id order) becomes that record's estimate."""
        ...

    async def mark_priced(
        self, session: AsyncSession, costs: Mapping[int, int], *, now: datetime, lease_owner: str | None
    ) -> list[SettledRow]: ...

    async def mark_settled(
        self, session: AsyncSession, reasons: Mapping[int, str | None], *, status: str, lease_owner: str | None
    ) -> list[SettledRow]: ...


def _sql(session: AsyncSession) -> AccountingSql:
    return by_dialect(session, sqlite=SQLITE_ACCOUNTING_SQL, postgresql=POSTGRES_ACCOUNTING_SQL)


class AccountingRepository:
    async def set_estimates(self, session: AsyncSession, estimates: dict[int, int]) -> None:
        items = sorted(estimates.items())
        if not items:
            return
        await _sql(session).set_estimates(session, items)

    async def flag_holds(self, session: AsyncSession, record_ids: Sequence[int], *, reason: str) -> None:
        """Flag records whose ``hold_id`` named a hold that was not theirs (rare: one statement per chunk)."""
        for part in chunks(sorted(record_ids)):
            await session.execute(
                update(UsageRecord)
                .where(UsageRecord.id.in_(part))
                .values(hold_flag_reason=reason)
                .execution_options(synchronize_session=False)
            )

    async def mark_priced(
        self, session: AsyncSession, costs: dict[int, int], *, now: datetime, lease_owner: str | None = None
    ) -> list[SettledRow]:
        """Set ``priced`` + cost on the records still pending (and leased by ``lease_owner`` when
        given); returns those that moved."""
        return await _sql(session).mark_priced(session, costs, now=now, lease_owner=lease_owner)

    async def mark_settled(
        self, session: AsyncSession, reasons: Mapping[int, str | None], *, status: str, lease_owner: str | None = None
    ) -> list[SettledRow]:
        """Move pending records to ``quarantined``/``unpriced`` with a reason; returns those that moved."""
        return await _sql(session).mark_settled(session, reasons, status=status, lease_owner=lease_owner)

    async def states(self, session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[str, int | None, str | None]]:
        """``{id: (status, cost_nano_usd, lease_owner)}`` of existing records."""
        found: dict[int, tuple[str, int | None, str | None]] = {}
        columns = (UsageRecord.id, UsageRecord.status, UsageRecord.cost_nano_usd, UsageRecord.lease_owner)
        for part in chunks(ids):
            rows = await session.execute(select(*columns).where(UsageRecord.id.in_(part)))
            found.update({id_: (status, cost, owner) for id_, status, cost, owner in rows})
        return found


accounting_repository = AccountingRepository()
