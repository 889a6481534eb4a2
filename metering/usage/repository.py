"""SQL of usage ingest: batch look-ups and the bulk idempotent INSERT of usage records.

Every method takes whole batches (sets of names or keys) so one POST costs a fixed handful
of statements whatever its size. The SQL differs between the engines (``repository_sqlite``,
``repository_pg``); both keep ``UsageSql``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import by_dialect
from metering.usage.repository_pg import POSTGRES_USAGE_SQL
from metering.usage.repository_sqlite import SQLITE_USAGE_SQL
from metering.usage.rows import Key as Key
from metering.usage.rows import NewUsageRow as NewUsageRow


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


class UsageSql(Protocol):
    """The statements of ingest that differ between SQLite and PostgreSQL; callers pass no empty batch."""

    async def lookup_batch(self, session: AsyncSession, documents: tuple[str, str, str]) -> Iterable[Sequence[Any]]:
        """Rows of ``(kind, name, text, number, number, text)`` for the JSON arrays of provider ids,
        account names and (provider, model) pairs in ``documents``."""
        ...

    async def memberships(self, session: AsyncSession, pairs: set[tuple[str, str]]) -> Iterable[Sequence[Any]]:
        """``(org, user)`` rows of the memberships among ``pairs``, and possibly others."""
        ...

    async def insert_new(
        self, session: AsyncSession, rows: Sequence[NewUsageRow], *, received_at: datetime
    ) -> dict[Key, int]: ...

    async def stored_hashes(self, session: AsyncSession, keys: Sequence[Key]) -> dict[Key, str]: ...


def _sql(session: AsyncSession) -> UsageSql:
    return by_dialect(session, sqlite=SQLITE_USAGE_SQL, postgresql=POSTGRES_USAGE_SQL)


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
        rows = await _sql(session).lookup_batch(session, params)
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
        rows = await _sql(session).memberships(session, pairs)
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
        return await _sql(session).insert_new(session, rows, received_at=received_at)

    async def stored_hashes(self, session: AsyncSession, keys: Iterable[Key]) -> dict[Key, str]:
        """``{key: content_hash}`` of the stored records among ``keys``."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        return await _sql(session).stored_hashes(session, keys)


usage_repository = UsageRepository()
