"""SQL of usage ingest: batch look-ups and the bulk idempotent INSERT of usage records.

Every method takes whole batches (sets of names or keys) so one POST costs a fixed handful
of statements whatever its size. On PostgreSQL look-ups take one array per column
(``unnest``), so each statement is prepared once and reused, and the INSERT takes the rows as
one JSON document (``json_to_recordset``): encoding eighteen
arrays value by value cost three times the client CPU of one ``orjson.dumps``. On SQLite
values travel as multi-row VALUES of positional parameters, without per-value ORM processing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
from sqlalchemy import select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import is_sqlite
from metering.models import Membership, UsageRecord
from metering.sql import chunks, sqlite_fetchall

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

Key = tuple[str, str]  # (provider_id, request_id)

# Columns the ingest writes, in the order of NewUsageRow's fields.
INSERT_COLUMNS = (
    "provider_id",
    "request_id",
    "user_name",
    "bill_to",
    "billing_account",
    "bill_to_flag_reason",
    "model",
    "task",
    "custom_key",
    "started_at",
    "period",
    "duration_ms",
    "hardware",
    "input_tokens",
    "output_tokens",
    "hold_id",
    "content_hash",
    "estimate_nano_usd",
)
# Written with the same value on every new row (status follows custom_key).
_FIXED_COLUMNS = ("bill_to_flagged", "status", "received_at", "attempts", "next_attempt_at")
_PG_TYPES = {
    "custom_key": "boolean",
    "started_at": "timestamptz",
    "duration_ms": "bigint",
    "input_tokens": "bigint",
    "output_tokens": "bigint",
    "estimate_nano_usd": "bigint",
}
# SQLite binds at most 32,766 values per statement: 1,000 rows of 23 columns stay under it.
_SQLITE_ROWS_PER_INSERT = 1_000
_SQLITE_KEYS_PER_SELECT = 5_000


@dataclass(slots=True)
class NewUsageRow:
    """One usage record ready for the INSERT; everything the ingest decides is already in it."""

    provider_id: str
    request_id: str
    user_name: str
    bill_to: str | None
    billing_account: str
    bill_to_flag_reason: str | None
    model: str
    task: str | None
    custom_key: bool
    started_at: datetime
    period: str
    duration_ms: int | None
    hardware: str | None
    input_tokens: int | None
    output_tokens: int | None
    hold_id: str | None
    content_hash: str
    # Written in the INSERT: the estimate the record gets unless a hold is attached to it.
    estimate_nano_usd: int = 0
    # The id the INSERT gave the row (0 until then): ingest hands inserted rows to accounting as they are.
    id: int = 0

    @property
    def key(self) -> Key:
        return self.provider_id, self.request_id


@dataclass(slots=True)
class AccountTerms:
    """The columns of an account that ingest and its accounting decide with (who pays, credits)."""

    name: str
    kind: str
    plan: str
    seats: int


@dataclass(slots=True)
class ProviderTerms:
    """The columns of a provider that pricing a new record reads (named as ``Provider``'s)."""

    id: str
    pricing: str
    default_estimate_nano_usd: int
    credit_eligible: bool
    hardware_prices_nano_usd_per_second: dict[str, int] | None


@dataclass(slots=True)
class BatchLookup:
    """What one ingest batch decides with, read in one statement."""

    providers: dict[str, ProviderTerms]
    accounts: dict[str, AccountTerms]
    # (provider, model) -> (samples, mean) of the pairs with a stored estimate.
    estimates: dict[tuple[str, str], tuple[int, int]]


def _pg_insert_sql() -> str:
    columns = ", ".join(INSERT_COLUMNS)
    record = ", ".join(f"{c} {_PG_TYPES.get(c, 'varchar')}" for c in INSERT_COLUMNS)
    return (
        f"INSERT INTO usage_records ({columns}, {', '.join(_FIXED_COLUMNS)}) "
        f"SELECT {columns}, bill_to_flag_reason IS NOT NULL, "
        "CASE WHEN custom_key THEN 'custom_key' ELSE 'pending' END, $2, 0, $2 "
        f"FROM json_to_recordset($1::json) AS batch({record}) "
        "ON CONFLICT (provider_id, request_id) DO NOTHING "
        "RETURNING id, provider_id, request_id"
    )


# $1: the rows as a JSON array of NewUsageRow objects; $2: received_at.
_PG_INSERT = _pg_insert_sql()
# Names travel as JSON arrays, so the statement text never changes and stays prepared. On
# PostgreSQL they are joined rather than tested with ``= ANY(array)``: a filter with ANY compares
# every row read with every element, quadratic in the batch once the planner picks a scan.
# One statement answers everything a batch decides with: its providers' pricing terms, its
# accounts' terms, and the stored estimates of its (provider, model) pairs. Each row is
# (kind, name, text, number, number, text): see ``UsageRepository.lookup_batch``.
_PG_LOOKUP = (
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
_SQLITE_LOOKUP = (
    "SELECT 'provider', id, pricing, default_estimate_nano_usd, credit_eligible, hardware_prices_nano_usd_per_second "
    "FROM providers WHERE id IN (SELECT value FROM json_each(?1)) "
    "UNION ALL SELECT kind, name, plan, seats, 0, NULL FROM accounts WHERE name IN (SELECT value FROM json_each(?2)) "
    "UNION ALL SELECT 'estimate', provider_id, model, samples, mean_nano_usd, NULL FROM cost_estimates "
    "WHERE (provider_id, model) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?3))"
)
_PG_MEMBERSHIPS = text(
    "SELECT m.org_name, m.user_name FROM memberships AS m "
    "JOIN unnest(CAST(:orgs AS varchar[]), CAST(:users AS varchar[])) AS p(org_name, user_name) "
    "ON m.org_name = p.org_name AND m.user_name = p.user_name"
)
_PG_STORED_HASHES = text(
    "SELECT u.provider_id, u.request_id, u.content_hash FROM usage_records AS u "
    "JOIN unnest(CAST(:provider_ids AS varchar[]), CAST(:request_ids AS varchar[])) AS k(provider_id, request_id) "
    "ON u.provider_id = k.provider_id AND u.request_id = k.request_id"
)
_SQLITE_INSERT_HEAD = f"INSERT INTO usage_records ({', '.join(INSERT_COLUMNS + _FIXED_COLUMNS)}) VALUES "
_SQLITE_INSERT_TAIL = " ON CONFLICT (provider_id, request_id) DO NOTHING RETURNING id, provider_id, request_id"
_SQLITE_ROW = "(" + ", ".join("?" * (len(INSERT_COLUMNS) + len(_FIXED_COLUMNS))) + ")"


class UsageRepository:
    async def lookup(
        self, session: AsyncSession, *, provider_ids: Iterable[str], names: Iterable[str]
    ) -> tuple[set[str], dict[str, AccountTerms]]:
        """The registered providers among ``provider_ids`` and the accounts among ``names``, in one statement."""
        found = await self.lookup_batch(session, provider_ids=provider_ids, names=names)
        return set(found.providers), found.accounts

    async def lookup_batch(
        self,
        session: AsyncSession,
        *,
        provider_ids: Iterable[str],
        names: Iterable[str],
        estimate_keys: Iterable[tuple[str, str]] = (),
    ) -> BatchLookup:
        """The providers among ``provider_ids``, the accounts among ``names`` and the stored estimates
        among ``estimate_keys`` (provider, model), in one statement."""
        params = (
            orjson.dumps(sorted(set(provider_ids))).decode(),
            orjson.dumps(sorted(set(names))).decode(),
            orjson.dumps(sorted(set(estimate_keys))).decode(),
        )
        rows: Iterable[Sequence[Any]]
        if is_sqlite(session):
            rows = await sqlite_fetchall(session, _SQLITE_LOOKUP, params)
        else:
            connection = await session.connection()
            rows = await connection.exec_driver_sql(_PG_LOOKUP, params)
        found = BatchLookup({}, {}, {})
        for kind, name, text_value, first, second, document in rows:
            if kind == "provider":
                # Decoded as the ORM's JSON column decodes it.
                prices = json.loads(document) if document is not None else None
                found.providers[name] = ProviderTerms(name, text_value, first, bool(second), prices)
            elif kind == "estimate":
                found.estimates[(name, text_value)] = (first, second)
            else:
                found.accounts[name] = AccountTerms(name, kind, text_value, first)
        return found

    async def memberships(self, session: AsyncSession, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (org, user) pairs are memberships; reads only the members named, not whole orgs."""
        pairs = set(pairs)
        if not pairs:
            return set()
        if is_sqlite(session):
            orgs = sorted({org for org, _ in pairs})
            users = sorted({user for _, user in pairs})
            rows = await session.execute(
                select(Membership.org_name, Membership.user_name).where(
                    Membership.org_name.in_(orgs), Membership.user_name.in_(users)
                )
            )
        else:
            ordered = sorted(pairs)
            rows = await session.execute(
                _PG_MEMBERSHIPS, {"orgs": [org for org, _ in ordered], "users": [user for _, user in ordered]}
            )
        return {(org, user) for org, user in rows} & pairs

    async def insert_new(
        self, session: AsyncSession, rows: Sequence[NewUsageRow], *, received_at: datetime
    ) -> dict[Key, int]:
        """INSERT … ON CONFLICT DO NOTHING; returns ``{key: id}`` of the rows this call inserted.

        Rows are inserted in key order so two batches sharing keys wait on each other in the
        same order on PostgreSQL's unique index rather than deadlocking.
        """
        if not rows:
            return {}
        rows = sorted(rows, key=lambda row: (row.provider_id, row.request_id))
        if is_sqlite(session):
            return await self._insert_sqlite(session, rows, received_at=received_at)
        # orjson writes a dataclass as an object of its fields, named as the columns; validation
        # let no NUL or lone surrogate through, so every string is valid JSON text for PostgreSQL.
        connection = await session.connection()
        result = cast(  # the statement returns (id, provider_id, request_id)
            "CursorResult[int, str, str]",
            await connection.exec_driver_sql(_PG_INSERT, (orjson.dumps(rows).decode(), received_at)),
        )
        return {(provider_id, request_id): id_ for id_, provider_id, request_id in result}

    async def _insert_sqlite(
        self, session: AsyncSession, rows: Sequence[NewUsageRow], *, received_at: datetime
    ) -> dict[Key, int]:
        received = sqlite_time(received_at)
        inserted: dict[Key, int] = {}
        for chunk in chunks(rows, _SQLITE_ROWS_PER_INSERT):
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
            sql = _SQLITE_INSERT_HEAD + ", ".join([_SQLITE_ROW] * len(chunk)) + _SQLITE_INSERT_TAIL
            result = await sqlite_fetchall(session, sql, params)
            inserted.update({(provider_id, request_id): id_ for id_, provider_id, request_id in result})
        return inserted

    async def stored_hashes(self, session: AsyncSession, keys: Iterable[Key]) -> dict[Key, str]:
        """``{key: content_hash}`` of the stored records among ``keys``."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        if not is_sqlite(session):
            result = await session.execute(
                _PG_STORED_HASHES,
                {"provider_ids": [p for p, _ in keys], "request_ids": [r for _, r in keys]},
            )
            return {(p, r): h for p, r, h in result}
        table = UsageRecord.__table__
        stored: dict[Key, str] = {}
        for chunk in chunks(keys, _SQLITE_KEYS_PER_SELECT):
            result = await session.execute(
                select(table.c.provider_id, table.c.request_id, table.c.content_hash).where(
                    tuple_(table.c.provider_id, table.c.request_id).in_(chunk)
                )
            )
            stored.update({(p, r): h for p, r, h in result})
        return stored


def sqlite_time(moment: datetime) -> str:
    """A timestamp as the ORM's ``UTCDateTime`` column stores it on SQLite (UTC, naive, microseconds),
    formatted directly: the column's own bind processors cost several times more per row."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


usage_repository = UsageRepository()
