"""SQL of usage accounting: estimates of new records and the exactly-once moves out of ``pending``.

Every move is conditional on ``status = 'pending'``, so of two workers settling one
request only one sees it move; the other is told it was not pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import is_sqlite
from metering.ledger.repository import chunks
from metering.models import UsageRecord

# asyncpg caps one statement at 32,767 parameters; arrays make each chunk 2-3 parameters.
PG_CHUNK = 20_000


@dataclass(frozen=True, slots=True)
class SettledRow:
    """A record that just left ``pending``, with what accounting needs to move its money."""

    id: int
    billing_account: str
    provider_id: str
    model: str
    period: str
    estimate_nano_usd: int


_SETTLED_COLUMNS = (
    UsageRecord.id,
    UsageRecord.billing_account,
    UsageRecord.provider_id,
    UsageRecord.model,
    UsageRecord.period,
    UsageRecord.estimate_nano_usd,
)
_RETURNING = "u.id, u.billing_account, u.provider_id, u.model, u.period, u.estimate_nano_usd"


class AccountingRepository:
    async def set_estimates(self, session: AsyncSession, estimates: dict[int, int]) -> None:
        items = sorted(estimates.items())
        if not items:
            return
        if is_sqlite(session):
            table = UsageRecord.__table__
            await session.execute(
                update(table).where(table.c.id == bindparam("r_id")).values(estimate_nano_usd=bindparam("r_estimate")),
                [{"r_id": i, "r_estimate": e} for i, e in items],
            )
            return
        for part in chunks(items, PG_CHUNK):
            await session.execute(
                text(
                    "UPDATE usage_records AS u SET estimate_nano_usd = v.estimate "
                    "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:estimates AS BIGINT[])) AS v(id, estimate) "
                    "WHERE u.id = v.id"
                ),
                {"ids": [i for i, _ in part], "estimates": [e for _, e in part]},
            )

    async def mark_priced(self, session: AsyncSession, costs: dict[int, int], *, now: datetime) -> list[SettledRow]:
        """Set ``priced`` + cost on the records still pending; returns those that moved."""
        items = sorted(costs.items())
        if is_sqlite(session):
            moved = await self._pending(session, [i for i, _ in items])
            if moved:
                table = UsageRecord.__table__
                await session.execute(
                    update(table)
                    .where(table.c.id == bindparam("r_id"), table.c.status == "pending")
                    .values(status="priced", cost_nano_usd=bindparam("r_cost"), priced_at=now),
                    [{"r_id": row.id, "r_cost": costs[row.id]} for row in moved],
                )
            return moved
        await self._lock(session, [i for i, _ in items])
        moved = []
        for part in chunks(items, PG_CHUNK):
            result = await session.execute(
                text(
                    "UPDATE usage_records AS u SET status = 'priced', cost_nano_usd = v.cost, priced_at = :now "
                    "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:costs AS BIGINT[])) AS v(id, cost) "
                    f"WHERE u.id = v.id AND u.status = 'pending' RETURNING {_RETURNING}"
                ),
                {"ids": [i for i, _ in part], "costs": [c for _, c in part], "now": now},
            )
            moved.extend(SettledRow(*row) for row in result)
        return moved

    async def mark_settled(
        self, session: AsyncSession, reasons: dict[int, str | None], *, status: str
    ) -> list[SettledRow]:
        """Move pending records to ``quarantined``/``unpriced`` with a reason; returns those that moved."""
        items = sorted(reasons.items())
        if is_sqlite(session):
            moved = await self._pending(session, [i for i, _ in items])
            if moved:
                table = UsageRecord.__table__
                await session.execute(
                    update(table)
                    .where(table.c.id == bindparam("r_id"), table.c.status == "pending")
                    .values(status=status, quarantine_reason=bindparam("r_reason")),
                    [{"r_id": row.id, "r_reason": reasons[row.id]} for row in moved],
                )
            return moved
        await self._lock(session, [i for i, _ in items])
        moved = []
        for part in chunks(items, PG_CHUNK):
            result = await session.execute(
                text(
                    "UPDATE usage_records AS u SET status = :status, quarantine_reason = v.reason "
                    "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:reasons AS VARCHAR[])) AS v(id, reason) "
                    f"WHERE u.id = v.id AND u.status = 'pending' RETURNING {_RETURNING}"
                ),
                {"ids": [i for i, _ in part], "reasons": [r for _, r in part], "status": status},
            )
            moved.extend(SettledRow(*row) for row in result)
        return moved

    async def _lock(self, session: AsyncSession, ids: list[int]) -> None:
        """PostgreSQL: lock the records in id order first, so two workers settling overlapping
        batches wait on each other instead of deadlocking inside an UPDATE … FROM."""
        for part in chunks(ids, PG_CHUNK):
            await session.execute(
                text("SELECT id FROM usage_records WHERE id = ANY(CAST(:ids AS BIGINT[])) ORDER BY id FOR UPDATE"),
                {"ids": list(part)},
            )

    async def _pending(self, session: AsyncSession, ids: Sequence[int]) -> list[SettledRow]:
        found: list[SettledRow] = []
        for part in chunks(ids):
            rows = await session.execute(
                select(*_SETTLED_COLUMNS).where(UsageRecord.id.in_(part), UsageRecord.status == "pending")
            )
            found.extend(SettledRow(*row) for row in rows)
        return found

    async def states(self, session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[str, int | None]]:
        """``{id: (status, cost_nano_usd)}`` of existing records."""
        found: dict[int, tuple[str, int | None]] = {}
        for part in chunks(ids):
            rows = await session.execute(
                select(UsageRecord.id, UsageRecord.status, UsageRecord.cost_nano_usd).where(UsageRecord.id.in_(part))
            )
            found.update({id_: (status, cost) for id_, status, cost in rows})
        return found


accounting_repository = AccountingRepository()
