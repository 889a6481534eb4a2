"""Usage SQL on SQLite: ingest's look-ups and INSERT, accounting's moves out of ``pending``. Values
travel as multi-row VALUES of positional parameters, without per-value ORM processing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Membership, UsageRecord
from metering.sql import chunks, sqlite_fetchall
from metering.usage.rows import FIXED_COLUMNS, INSERT_COLUMNS, Key, NewUsageRow, SettledRow

if TYPE_CHECKING:
    from sqlalchemy.engine import Result

    from metering.usage.accounting_repository import AccountingSql
    from metering.usage.repository import UsageSql

# SQLite binds at most 32,766 values per statement: 1,000 rows of 23 columns stay under it.
_ROWS_PER_INSERT = 1_000
_KEYS_PER_SELECT = 5_000

# One statement answers everything a batch decides with (see ``UsageRepository.lookup_batch``).
_LOOKUP = (
    "SELECT 'provider', id, pricing, default_estimate_nano_usd, credit_eligible, hardware_prices_nano_usd_per_second "
    "FROM providers WHERE id IN (SELECT value FROM json_each(?1)) "
    "UNION ALL SELECT kind, name, plan, seats, 0, NULL FROM accounts WHERE name IN (SELECT value FROM json_each(?2)) "
    "UNION ALL SELECT 'estimate', provider_id, model, samples, mean_nano_usd, NULL FROM cost_estimates "
    "WHERE (provider_id, model) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?3))"
)
_INSERT_HEAD = f"INSERT INTO usage_records ({', '.join(INSERT_COLUMNS + FIXED_COLUMNS)}) VALUES "
_INSERT_TAIL = " ON CONFLICT (provider_id, request_id) DO NOTHING RETURNING id, provider_id, request_id"
_ROW = "(" + ", ".join("?" * (len(INSERT_COLUMNS) + len(FIXED_COLUMNS))) + ")"

_SETTLED_COLUMNS = (
    UsageRecord.id,
    UsageRecord.billing_account,
    UsageRecord.provider_id,
    UsageRecord.model,
    UsageRecord.period,
    UsageRecord.estimate_nano_usd,
)


class SqliteUsageSql:
    async def lookup_batch(self, session: AsyncSession, documents: tuple[str, str, str]) -> list[tuple[Any, ...]]:
        return await sqlite_fetchall(session, _LOOKUP, documents)

    async def memberships(self, session: AsyncSession, pairs: set[tuple[str, str]]) -> Result[tuple[str, str]]:
        """Reads the members of the orgs named whose user is named: a superset of ``pairs``."""
        orgs = sorted({org for org, _ in pairs})
        users = sorted({user for _, user in pairs})
        return await session.execute(
            select(Membership.org_name, Membership.user_name).where(
                Membership.org_name.in_(orgs), Membership.user_name.in_(users)
            )
        )

    async def insert_new(
        self, session: AsyncSession, rows: Sequence[NewUsageRow], *, received_at: datetime
    ) -> dict[Key, int]:
        received = sqlite_time(received_at)
        inserted: dict[Key, int] = {}
        for chunk in chunks(rows, _ROWS_PER_INSERT):
            params: list[object] = []
            extend = params.extend
            for r in chunk:
                extend(
                    (
                        r.provider_id,
                        r.request_id,
                        r.user_name,
                        r.bill_to,
                        r.billing_account,
                        r.bill_to_flag_reason,
                        r.model,
                        r.task,
                        r.custom_key,
                        sqlite_time(r.started_at),
                        r.period,
                        r.duration_ms,
                        r.hardware,
                        r.input_tokens,
                        r.output_tokens,
                        r.hold_id,
                        r.content_hash,
                        r.estimate_nano_usd,
                        r.bill_to_flag_reason is not None,
                        "custom_key" if r.custom_key else "pending",
                        received,
                        0,
                        received,
                    )
                )
            sql = _INSERT_HEAD + ", ".join([_ROW] * len(chunk)) + _INSERT_TAIL
            result = await sqlite_fetchall(session, sql, params)
            inserted.update({(provider_id, request_id): id_ for id_, provider_id, request_id in result})
        return inserted

    async def stored_hashes(self, session: AsyncSession, keys: Sequence[Key]) -> dict[Key, str]:
        table = UsageRecord.__table__
        stored: dict[Key, str] = {}
        for chunk in chunks(keys, _KEYS_PER_SELECT):
            result = await session.execute(
                select(table.c.provider_id, table.c.request_id, table.c.content_hash).where(
                    tuple_(table.c.provider_id, table.c.request_id).in_(chunk)
                )
            )
            stored.update({(p, r): h for p, r, h in result})
        return stored


class SqliteAccountingSql:
    """Moves read the pending records first, then update them: BEGIN IMMEDIATE already serializes writers."""

    async def set_estimates(self, session: AsyncSession, items: Sequence[tuple[int, int]]) -> None:
        table = UsageRecord.__table__
        await session.execute(
            update(table).where(table.c.id == bindparam("r_id")).values(estimate_nano_usd=bindparam("r_estimate")),
            [{"r_id": i, "r_estimate": e} for i, e in items],
        )

    async def mark_priced(
        self, session: AsyncSession, costs: Mapping[int, int], *, now: datetime, lease_owner: str | None
    ) -> list[SettledRow]:
        return await self._move(
            session, costs, lease_owner, status="priced", cost_nano_usd=bindparam("r_value"), priced_at=now
        )

    async def mark_settled(
        self, session: AsyncSession, reasons: Mapping[int, str | None], *, status: str, lease_owner: str | None
    ) -> list[SettledRow]:
        return await self._move(session, reasons, lease_owner, status=status, quarantine_reason=bindparam("r_value"))

    async def _move(
        self, session: AsyncSession, values: Mapping[int, object], lease_owner: str | None, **columns: object
    ) -> list[SettledRow]:
        """The records of ``values`` still pending take ``columns`` (``r_value``: each one's value)."""
        moved = await self._pending(session, sorted(values), lease_owner=lease_owner)
        if moved:
            table = UsageRecord.__table__
            await session.execute(
                update(table).where(table.c.id == bindparam("r_id"), table.c.status == "pending").values(**columns),
                [{"r_id": row.id, "r_value": values[row.id]} for row in moved],
            )
        return moved

    async def _pending(self, session: AsyncSession, ids: Sequence[int], *, lease_owner: str | None) -> list[SettledRow]:
        """The pending records among ``ids``."""
        found: list[SettledRow] = []
        for part in chunks(ids):
            statement = select(*_SETTLED_COLUMNS).where(UsageRecord.id.in_(part), UsageRecord.status == "pending")
            if lease_owner is not None:
                statement = statement.where(UsageRecord.lease_owner == lease_owner)
            rows = await session.execute(statement)
            found.extend(SettledRow(*row) for row in rows)
        return found


def sqlite_time(moment: datetime) -> str:
    """A timestamp as the ORM's ``UTCDateTime`` column stores it on SQLite (UTC, naive, microseconds),
    formatted directly: the column's own bind processors cost several times more per row."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


SQLITE_USAGE_SQL: UsageSql = SqliteUsageSql()
SQLITE_ACCOUNTING_SQL: AccountingSql = SqliteAccountingSql()
