"""Usage SQL on PostgreSQL: ingest's look-ups and INSERT, accounting's moves out of ``pending``. Values
travel as arrays (``unnest``) or one JSON document, never a parameter each, so every statement stays prepared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.sql import chunks
from metering.usage.rows import FIXED_COLUMNS, INSERT_COLUMNS, Key, NewUsageRow, SettledRow

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult, Result

    from metering.usage.accounting_repository import AccountingSql
    from metering.usage.repository import UsageSql

# asyncpg caps one statement at 32,767 parameters; arrays make each chunk 2-3 parameters.
PG_CHUNK = 20_000

_TYPES = {
    "custom_key": "boolean",
    "started_at": "timestamptz",
    "duration_ms": "bigint",
    "input_tokens": "bigint",
    "output_tokens": "bigint",
    "estimate_nano_usd": "bigint",
}


def _insert_sql() -> str:
    """Each row's key into ``usage_request_keys`` first, then the records of the keys inserted now.

    ``usage_records`` is partitioned by month, and a partitioned table's unique keys must hold
    the partition key, so ``(provider_id, request_id)`` is kept unique across months by
    ``usage_request_keys``: a key that exists (a replay, or a concurrent batch's, which is
    waited for) is left out by ON CONFLICT DO NOTHING, and its record with it. The record's id
    is drawn with its key, so the key names its record. One statement, as the INSERT … ON
    CONFLICT on the table's own unique index was before partitioning.
    """
    columns = ", ".join(INSERT_COLUMNS)
    record = ", ".join(f"{c} {_TYPES.get(c, 'varchar')}" for c in INSERT_COLUMNS)
    return (
        f"WITH batch AS MATERIALIZED (SELECT * FROM json_to_recordset($1::json) AS batch({record})), "
        "keys AS ("
        " INSERT INTO usage_request_keys (provider_id, request_id, period, usage_record_id)"
        " SELECT provider_id, request_id, period, nextval('usage_records_id_seq') FROM batch"
        " ON CONFLICT DO NOTHING RETURNING provider_id, request_id, usage_record_id"
        ") "
        f"INSERT INTO usage_records (id, {columns}, {', '.join(FIXED_COLUMNS)}) "
        f"SELECT k.usage_record_id, {', '.join(f'b.{c}' for c in INSERT_COLUMNS)}, b.bill_to_flag_reason IS NOT NULL, "
        "CASE WHEN b.custom_key THEN 'custom_key' ELSE 'pending' END, $2, 0, $2 "
        "FROM batch AS b JOIN keys AS k ON k.provider_id = b.provider_id AND k.request_id = b.request_id "
        "RETURNING id, provider_id, request_id"
    )


# $1: the rows as a JSON array of NewUsageRow objects; $2: received_at. One document rather than
# eighteen arrays: encoding arrays value by value costs far more client CPU than one ``orjson.dumps``.
_INSERT = _insert_sql()
# Names travel as JSON arrays, so the statement text never changes and stays prepared. They are
# joined rather than tested with ``= ANY(array)``: a filter with ANY compares every row read with
# every element, quadratic in the batch once the planner picks a scan.
# One statement answers everything a batch decides with: its providers' pricing terms, its
# accounts' terms, and the stored estimates of its (provider, model) pairs. Each row is
# (kind, name, text, number, number, text): see ``UsageRepository.lookup_batch``.
_LOOKUP = (
    "SELECT CAST('provider' AS varchar), p.id, p.pricing, p.default_estimate_nano_usd, "
    "CAST(CASE WHEN p.credit_eligible THEN 1 ELSE 0 END AS bigint), "
    "CAST(p.hardware_prices_nano_usd_per_second AS text) "
    "FROM providers AS p WHERE p.id IN (SELECT json_array_elements_text($1::json)) "
    "UNION ALL SELECT a.kind, a.name, a.plan, CAST(a.seats AS bigint), CAST(0 AS bigint), CAST(NULL AS text) "
    "FROM accounts AS a JOIN json_array_elements_text($2::json) AS n(name) ON a.name = n.name "
    "UNION ALL SELECT CAST('estimate' AS varchar), e.provider_id, e.model, CAST(e.samples AS bigint), e.mean_nano_usd, "
    "CAST(NULL AS text) FROM cost_estimates AS e "
    "JOIN json_array_elements($3::json) AS k(pair) ON e.provider_id = k.pair->>0 AND e.model = k.pair->>1"
)
_MEMBERSHIPS = text(
    "SELECT m.org_name, m.user_name FROM memberships AS m "
    "JOIN unnest(CAST(:orgs AS varchar[]), CAST(:users AS varchar[])) AS p(org_name, user_name) "
    "ON m.org_name = p.org_name AND m.user_name = p.user_name"
)
# Through the keys: they name each record's id and month, so one partition is read per key.
_STORED_HASHES = text(
    "SELECT k.provider_id, k.request_id, u.content_hash FROM usage_request_keys AS k "
    "JOIN unnest(CAST(:provider_ids AS varchar[]), CAST(:request_ids AS varchar[])) AS q(provider_id, request_id) "
    "ON k.provider_id = q.provider_id AND k.request_id = q.request_id "
    "JOIN usage_records AS u ON u.id = k.usage_record_id AND u.period = k.period"
)
_RETURNING = "u.id, u.billing_account, u.provider_id, u.model, u.period, u.estimate_nano_usd"


def _move_sql(value_type: str, assignments: str, *, owned: bool) -> str:
    """Move the pending records of a JSON batch ``$1`` of ``{id, value}`` in one statement.

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
_PRICE = tuple(
    _move_sql("bigint", "status = 'priced', cost_nano_usd = v.value, priced_at = $2", owned=owned)
    for owned in (False, True)
)
_SETTLE = tuple(
    _move_sql("varchar", "status = $2, quarantine_reason = v.value", owned=owned) for owned in (False, True)
)


class PostgresUsageSql:
    async def lookup_batch(self, session: AsyncSession, documents: tuple[str, str, str]) -> CursorResult[Any]:
        connection = await session.connection()
        return await connection.exec_driver_sql(_LOOKUP, documents)

    async def memberships(self, session: AsyncSession, pairs: set[tuple[str, str]]) -> Result[Any]:
        ordered = sorted(pairs)
        return await session.execute(
            _MEMBERSHIPS, {"orgs": [org for org, _ in ordered], "users": [user for _, user in ordered]}
        )

    async def insert_new(
        self, session: AsyncSession, rows: Sequence[NewUsageRow], *, received_at: datetime
    ) -> dict[Key, int]:
        # orjson writes a dataclass as an object of its fields, named as the columns; validation
        # let no NUL or lone surrogate through, so every string is valid JSON text for PostgreSQL.
        connection = await session.connection()
        result = cast(  # the statement returns (id, provider_id, request_id)
            "CursorResult[int, str, str]",
            await connection.exec_driver_sql(_INSERT, (orjson.dumps(rows).decode(), received_at)),
        )
        return {(provider_id, request_id): id_ for id_, provider_id, request_id in result}

    async def stored_hashes(self, session: AsyncSession, keys: Sequence[Key]) -> dict[Key, str]:
        result = await session.execute(
            _STORED_HASHES,
            {"provider_ids": [p for p, _ in keys], "request_ids": [r for _, r in keys]},
        )
        return {(p, r): h for p, r, h in result}


class PostgresAccountingSql:
    async def set_estimates(self, session: AsyncSession, items: Sequence[tuple[int, int]]) -> None:
        for part in chunks(items, PG_CHUNK):
            await session.execute(
                text(
                    "UPDATE usage_records AS u SET estimate_nano_usd = v.estimate "
                    "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:estimates AS BIGINT[])) AS v(id, estimate) "
                    "WHERE u.id = v.id"
                ),
                {"ids": [i for i, _ in part], "estimates": [e for _, e in part]},
            )

    async def mark_priced(
        self, session: AsyncSession, costs: Mapping[int, int], *, now: datetime, lease_owner: str | None
    ) -> list[SettledRow]:
        batch = orjson.dumps([{"id": i, "value": c} for i, c in costs.items()]).decode()
        return await self._move(session, _PRICE, batch, now, lease_owner)

    async def mark_settled(
        self, session: AsyncSession, reasons: Mapping[int, str | None], *, status: str, lease_owner: str | None
    ) -> list[SettledRow]:
        batch = orjson.dumps([{"id": i, "value": r} for i, r in reasons.items()]).decode()
        return await self._move(session, _SETTLE, batch, status, lease_owner)

    async def _move(
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


POSTGRES_USAGE_SQL: UsageSql = PostgresUsageSql()
POSTGRES_ACCOUNTING_SQL: AccountingSql = PostgresAccountingSql()
