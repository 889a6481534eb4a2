"""SQL of usage accounting: estimates of new records and the exactly-once moves out of ``pending``.

Every move is conditional on ``status = 'pending'``, so of two workers settling one
request only one sees it move; the other is told it was not pending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import is_sqlite
from metering.models import UsageRecord
from metering.sql import chunks

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

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


def _pg_move(value_type: str, assignments: str, *, owned: bool) -> str:
    """PostgreSQL: move the pending records of a JSON batch ``$1`` of ``{id, value}`` in one statement.

    ``locked`` is MATERIALIZED, so it runs once and locks the rows in id order whatever plan
    the UPDATE gets: two workers settling overlapping batches wait on each other instead of
    deadlocking. FOR UPDATE re-checks its conditions on a row that changed while it waited,
    and the UPDATE checks them again, so only rows still pending (and still ours) move.
    """
    owner = " AND u.lease_owner = $3" if owned else ""
    return (
        "WITH batch AS MATERIALIZED ("
        f" SELECT * FROM json_to_recordset($1::json) AS v(id bigint, value {value_type})"
        "), locked AS MATERIALIZED ("
        " SELECT u.id FROM usage_records AS u JOIN batch AS b ON u.id = b.id"
        f" WHERE u.status = 'pending'{owner} ORDER BY u.id FOR UPDATE OF u"
        ") "
        f"UPDATE usage_records AS u SET {assignments} FROM locked AS l JOIN batch AS v ON v.id = l.id "
        f"WHERE u.id = l.id AND u.status = 'pending'{owner} RETURNING {_RETURNING}"
    )


# (without, with) a lease owner; $2 is the time priced, or the status settled to.
_PG_PRICE = tuple(
    _pg_move("bigint", "status = 'priced', cost_nano_usd = v.value, priced_at = $2", owned=owned)
    for owned in (False, True)
)
_PG_SETTLE = tuple(
    _pg_move("varchar", "status = $2, quarantine_reason = v.value", owned=owned) for owned in (False, True)
)


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
        if is_sqlite(session):
            return await self._move_sqlite(
                session, costs, lease_owner, status="priced", cost_nano_usd=bindparam("r_value"), priced_at=now
            )
        batch = orjson.dumps([{"id": i, "value": c} for i, c in costs.items()]).decode()
        return await self._move_pg(session, _PG_PRICE, batch, now, lease_owner)

    async def _move_sqlite(
        self, session: AsyncSession, values: Mapping[int, object], lease_owner: str | None, **columns: object
    ) -> list[SettledRow]:
        """SQLite: the records of ``values`` still pending take ``columns`` (``r_value``: each one's value)."""
        moved = await self._pending(session, sorted(values), lease_owner=lease_owner)
        if moved:
            table = UsageRecord.__table__
            await session.execute(
                update(table).where(table.c.id == bindparam("r_id"), table.c.status == "pending").values(**columns),
                [{"r_id": row.id, "r_value": values[row.id]} for row in moved],
            )
        return moved

    async def mark_settled(
        self, session: AsyncSession, reasons: Mapping[int, str | None], *, status: str, lease_owner: str | None = None
    ) -> list[SettledRow]:
        """Move pending records to ``quarantined``/``unpriced`` with a reason; returns those that moved."""
        if is_sqlite(session):
            return await self._move_sqlite(
                session, reasons, lease_owner, status=status, quarantine_reason=bindparam("r_value")
            )
        batch = orjson.dumps([{"id": i, "value": r} for i, r in reasons.items()]).decode()
        return await self._move_pg(session, _PG_SETTLE, batch, status, lease_owner)

    async def _move_pg(
        self, session: AsyncSession, statements: tuple[str, ...], batch: str, value: object, lease_owner: str | None
    ) -> list[SettledRow]:
        """One statement: lock the pending rows of ``batch`` in id order, move them, return them."""
        connection = await session.connection()
        result: CursorResult[*tuple[Any, ...]]
        if lease_owner is None:
            result = await connection.exec_driver_sql(statements[0], (batch, value))
        else:
            result = await connection.exec_driver_sql(statements[1], (batch, value, lease_owner))
        return [SettledRow(*row) for row in result]

    async def _pending(self, session: AsyncSession, ids: Sequence[int], *, lease_owner: str | None) -> list[SettledRow]:
        """SQLite: the pending records among ``ids`` (BEGIN IMMEDIATE already serializes writers)."""
        found: list[SettledRow] = []
        for part in chunks(ids):
            statement = select(*_SETTLED_COLUMNS).where(UsageRecord.id.in_(part), UsageRecord.status == "pending")
            if lease_owner is not None:
                statement = statement.where(UsageRecord.lease_owner == lease_owner)
            rows = await session.execute(statement)
            found.extend(SettledRow(*row) for row in rows)
        return found

    async def states(self, session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[str, int | None, str | None]]:
        """``{id: (status, cost_nano_usd, lease_owner)}`` of existing records."""
        found: dict[int, tuple[str, int | None, str | None]] = {}
        columns = (UsageRecord.id, UsageRecord.status, UsageRecord.cost_nano_usd, UsageRecord.lease_owner)
        for part in chunks(ids):
            rows = await session.execute(select(*columns).where(UsageRecord.id.in_(part)))
            found.update({id_: (status, cost, owner) for id_, status, cost, owner in rows})
        return found


accounting_repository = AccountingRepository()
