"""SQL of cost collection: leases on pending usage records, and each provider's collection state.

Two kinds of lease (``metering.collection.batch_scope`` says which runs where):

- held (PostgreSQL): the claim locks the rows ``FOR UPDATE SKIP LOCKED`` in a
  transaction that stays open until the batch is applied; it writes nothing.
- written (SQLite, and PostgreSQL batches beyond the held ones a process may
  have in flight): the claim marks rows with the worker's lease (owner, expiry)
  and commits before the provider is asked, so a second worker skips them while
  the lease holds and takes them over once it lapses. Every SQLite transaction is
  ``BEGIN IMMEDIATE``, so a claim is already a serialized section.

Either way a worker killed mid-batch loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.collection.claims.dialects import postgres_claims_sql, sqlite_claims_sql
from metering.db import by_dialect, upsert_insert
from metering.models import Provider, ProviderCollectionState, UsageRecord
from metering.sql import rowcount

_usage = UsageRecord.__table__
_state = ProviderCollectionState.__table__
_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    id: int
    request_id: str
    received_at: datetime
    attempts: int


class ClaimsSql(Protocol):
    """The SQL of claims that differs between the engines (``metering.collection.claims.dialects``)."""

    def id_in(self, ids: Sequence[int]) -> ColumnElement[bool]:
        """``usage_records.id IN ids``."""

    def skip_locked(self, due: _Select) -> _Select:
        """``due``, passing over the rows other transactions hold locked."""

    def for_update(self, statement: _Select) -> _Select:
        """``statement``, its rows locked until the transaction ends."""


def _claims_sql(session: AsyncSession) -> ClaimsSql:
    return by_dialect(session, sqlite=sqlite_claims_sql, postgresql=postgres_claims_sql)


class ClaimRepository:
    async def claim_due(
        self,
        session: AsyncSession,
        *,
        provider_id: str,
        owner: str,
        due_before: datetime,
        now: datetime,
        lease_until: datetime,
        limit: int,
        held: bool = False,
    ) -> list[ClaimedRow]:
        """Lease up to ``limit`` pending rows of a provider that are due and not leased by a live
        worker: ``held``, by locking them for the caller's transaction (PostgreSQL), else by
        writing the lease on them."""
        if held:
            locked = (
                select(_usage.c.id, _usage.c.request_id, _usage.c.received_at, _usage.c.attempts)
                .where(*self._due(provider_id, due_before=due_before, now=now))
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            rows = (await session.execute(locked)).all()
            return [ClaimedRow(row.id, row.request_id, row.received_at, row.attempts) for row in rows]
        due = select(_usage.c.id).where(*self._due(provider_id, due_before=due_before, now=now)).limit(limit)
        due = _claims_sql(session).skip_locked(due)
        statement = (
            update(_usage)
            .where(_usage.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_expires_at=lease_until)
            .returning(_usage.c.id, _usage.c.request_id, _usage.c.received_at, _usage.c.attempts)
        )
        rows = (await session.execute(statement)).all()
        return [ClaimedRow(row.id, row.request_id, row.received_at, row.attempts) for row in rows]

    @staticmethod
    def _due(provider_id: str, *, due_before: datetime, now: datetime) -> tuple[ColumnElement[bool], ...]:
        """Pending rows of the provider, due, and with no written lease still running."""
        return (
            _usage.c.provider_id == provider_id,
            _usage.c.status == "pending",
            or_(_usage.c.next_attempt_at.is_(None), _usage.c.next_attempt_at <= due_before),
            or_(_usage.c.lease_expires_at.is_(None), _usage.c.lease_expires_at <= now),
        )

    async def release(self, session: AsyncSession, *, ids: Sequence[int], owner: str) -> int:
        """Give the rows back untouched (the provider failed, not the requests)."""
        if not ids:
            return 0
        statement = (
            update(_usage)
            .where(_claims_sql(session).id_in(ids), _usage.c.lease_owner == owner, _usage.c.status == "pending")
            .values(lease_owner=None, lease_expires_at=None)
        )
        result = await session.execute(statement)
        return rowcount(result)

    async def defer(
        self, session: AsyncSession, *, ids: Sequence[int], owner: str | None, next_attempt_at: datetime
    ) -> int:
        """Count one more unanswered ask, set when to ask again, and end the lease, on the rows
        still pending and leased by ``owner`` (``None``: held by the caller's transaction);
        returns how many."""
        if not ids:
            return 0
        owned = () if owner is None else (_usage.c.lease_owner == owner,)
        statement = (
            update(_usage)
            .where(_claims_sql(session).id_in(ids), *owned, _usage.c.status == "pending")
            .values(
                attempts=_usage.c.attempts + 1, next_attempt_at=next_attempt_at, lease_owner=None, lease_expires_at=None
            )
        )
        return rowcount(await session.execute(statement))

    async def oldest_pending(self, session: AsyncSession, *, provider_id: str) -> datetime | None:
        statement = select(func.min(_usage.c.received_at)).where(
            _usage.c.provider_id == provider_id, _usage.c.status == "pending"
        )
        oldest: datetime | None = await session.scalar(statement)
        return oldest

    async def collectable_providers(self, session: AsyncSession) -> list[Provider]:
        statement = (
            select(Provider)
            .where(Provider.pricing == "cost_endpoint", Provider.cost_endpoint.is_not(None))
            .order_by(Provider.id)
        )
        return list(await session.scalars(statement))


class CollectionStateRepository:
    async def get(self, session: AsyncSession, *, provider_id: str) -> ProviderCollectionState | None:
        return await session.get(ProviderCollectionState, provider_id, populate_existing=True)

    async def lock(self, session: AsyncSession, *, provider_id: str) -> ProviderCollectionState:
        """The provider's state row, created if needed and locked for this transaction."""
        await session.execute(
            upsert_insert(session, ProviderCollectionState)
            .values(provider_id=provider_id, consecutive_failures=0)
            .on_conflict_do_nothing()
        )
        statement = select(ProviderCollectionState).where(ProviderCollectionState.provider_id == provider_id)
        statement = _claims_sql(session).for_update(statement)
        return (await session.scalars(statement.execution_options(populate_existing=True))).one()

    async def take_probe(
        self, session: AsyncSession, *, provider_id: str, open_until: datetime, now: datetime, probe_until: datetime
    ) -> bool:
        """Half-open circuit: let exactly one worker send the probe batch (compare-and-set on the expiry)."""
        statement = (
            update(_state)
            .where(
                and_(
                    _state.c.provider_id == provider_id,
                    _state.c.circuit_open_until == open_until,
                    _state.c.circuit_open_until <= now,
                )
            )
            .values(circuit_open_until=probe_until, updated_at=now)
        )
        result = await session.execute(statement)
        return rowcount(result) == 1

    async def clear(self, session: AsyncSession, *, provider_id: str, now: datetime) -> None:
        """A good answer closes the circuit and ends any back-off."""
        statement = (
            update(_state)
            .where(
                _state.c.provider_id == provider_id,
                or_(
                    _state.c.consecutive_failures > 0,
                    _state.c.backoff_until.is_not(None),
                    _state.c.circuit_open_until.is_not(None),
                ),
            )
            .values(consecutive_failures=0, backoff_until=None, circuit_open_until=None, updated_at=now)
        )
        await session.execute(statement)


claim_repository = ClaimRepository()
collection_state_repository = CollectionStateRepository()
