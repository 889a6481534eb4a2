"""SQL of holds and of cost estimates; the ``held_nano_usd`` totals they move are ``metering.balances``'.

Lock order, everywhere a transaction touches both: ``account_periods`` rows first
(sorted by period, then account: the order of ``balances_repository.lock_rows``),
then ``holds`` rows. Authorize, attach and expiry all follow it, so they never
deadlock one another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Result, Select, bindparam, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.balances.repository import balances_repository
from metering.db import by_dialect, upsert_insert
from metering.holds.dialects import POSTGRES_HOLDS_SQL, SQLITE_HOLDS_SQL
from metering.models import CostEstimate, Hold, Provider
from metering.sql import chunks

# Bound parameters per IN list: far below SQLite's and asyncpg's limits.
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class HeldHold:
    id: str
    account_name: str
    period: str
    amount_nano_usd: int
    user_name: str
    provider_id: str
    # The provider is not credit-eligible: the amount is also in ``held_payg_only_nano_usd``.
    payg_only: bool


_HOLD_COLUMNS = (
    "id",
    "account_name",
    "user_name",
    "provider_id",
    "model",
    "period",
    "amount_nano_usd",
    "status",
    "created_at",
    "expires_at",
)
_HOLD_VALUES = {name: bindparam(f"h_{name}", type_=Hold.__table__.c[name].type) for name in _HOLD_COLUMNS}
_INSERT_HOLD = insert(Hold).values(_HOLD_VALUES)
_HELD_COLUMNS = (
    Hold.id,
    Hold.account_name,
    Hold.period,
    Hold.amount_nano_usd,
    Hold.user_name,
    Hold.provider_id,
    Provider.credit_eligible.is_(False),
)


class HoldsSql(Protocol):
    """The holds' row locks, which SQLite's single writer makes unnecessary."""

    async def lock_held(self, session: AsyncSession, statement: Select[*tuple[Any, ...]]) -> Result[*tuple[Any, ...]]:
        """Run ``statement`` (holds by id) with the holds it reads locked, in id order."""
        ...

    async def lock_expired(
        self, session: AsyncSession, statement: Select[*tuple[Any, ...]]
    ) -> Result[*tuple[Any, ...]]:
        """Run ``statement`` (an account's expired holds, in id order) with the holds it reads locked."""
        ...


def _sql(session: AsyncSession) -> HoldsSql:
    return by_dialect(session, sqlite=SQLITE_HOLDS_SQL, postgresql=POSTGRES_HOLDS_SQL)


class HoldRepository:
    async def insert_hold(self, session: AsyncSession, values: dict[str, Any], *, credit_eligible: bool) -> None:
        """Insert a hold and add its amount to ``held_nano_usd`` of its period row (locked by the caller),
        and to ``held_payg_only_nano_usd`` when its provider is not ``credit_eligible``.

        The step-by-step path; PostgreSQL's usual path does both inside the decision's
        statement (``metering.hot_path.pg_decision``).
        """
        params = {f"h_{name}": values[name] for name in _HOLD_COLUMNS}
        await (await session.connection()).execute(_INSERT_HOLD, params)
        await balances_repository.add_held(
            session,
            account=values["account_name"],
            period=values["period"],
            amount=values["amount_nano_usd"],
            credit_eligible=credit_eligible,
        )

    async def get(self, session: AsyncSession, hold_id: str) -> Hold | None:
        return await session.get(Hold, hold_id)

    async def periods_of_holds(self, session: AsyncSession, hold_ids: Sequence[str]) -> set[tuple[str, str]]:
        """(account, period) of the given holds still 'held', read without locks to learn what to lock."""
        found: set[tuple[str, str]] = set()
        for part in chunks(list(hold_ids), CHUNK):
            rows = await session.execute(
                select(Hold.account_name, Hold.period).where(Hold.id.in_(part), Hold.status == "held").distinct()
            )
            found.update((account, period) for account, period in rows)
        return found

    async def expired_accounts(self, session: AsyncSession, *, now: datetime, limit: int) -> list[str]:
        """Accounts with at least one hold still 'held' past its expiry."""
        rows = await session.scalars(
            select(Hold.account_name)
            .where(Hold.status == "held", Hold.expires_at < now)
            .distinct()
            .order_by(Hold.account_name)
            .limit(limit)
        )
        return list(rows)

    async def expired_periods(self, session: AsyncSession, *, account: str, now: datetime) -> set[str]:
        rows = await session.scalars(
            select(Hold.period)
            .where(Hold.account_name == account, Hold.status == "held", Hold.expires_at < now)
            .distinct()
        )
        return set(rows)

    async def lock_held(self, session: AsyncSession, hold_ids: Sequence[str]) -> list[HeldHold]:
        """The given holds that are still 'held', locked against a concurrent attach or expiry."""
        found: list[HeldHold] = []
        for part in chunks(sorted(set(hold_ids)), CHUNK):
            statement = (
                select(*_HELD_COLUMNS)
                .join(Provider, Provider.id == Hold.provider_id)
                .where(Hold.id.in_(part), Hold.status == "held")
            )
            found.extend(HeldHold(*row) for row in await _sql(session).lock_held(session, statement))
        return found

    async def lock_expired(self, session: AsyncSession, *, account: str, now: datetime, limit: int) -> list[HeldHold]:
        statement = (
            select(*_HELD_COLUMNS)
            .join(Provider, Provider.id == Hold.provider_id)
            .where(Hold.account_name == account, Hold.status == "held", Hold.expires_at < now)
            .order_by(Hold.id)
            .limit(limit)
        )
        return [HeldHold(*row) for row in await _sql(session).lock_expired(session, statement)]

    async def mark_attached(self, session: AsyncSession, usage_by_hold: dict[str, int]) -> None:
        """Set status and usage record of holds already locked by ``lock_held``."""
        if not usage_by_hold:
            return
        statement = (
            update(Hold.__table__)
            .where(Hold.__table__.c.id == bindparam("hold_id"))
            .values(status="attached", usage_record_id=bindparam("record_id"))
        )
        await session.execute(
            statement, [{"hold_id": hold_id, "record_id": record_id} for hold_id, record_id in usage_by_hold.items()]
        )

    async def mark_expired(self, session: AsyncSession, hold_ids: Sequence[str]) -> None:
        for part in chunks(list(hold_ids), CHUNK):
            await session.execute(update(Hold).where(Hold.id.in_(part), Hold.status == "held").values(status="expired"))


class EstimateRepository:
    async def estimate_rows(
        self, session: AsyncSession, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """(provider, model) → (samples, mean) of the keys that have a row."""
        found: dict[tuple[str, str], tuple[int, int]] = {}
        for part in chunks(sorted(set(keys)), CHUNK):
            rows = await session.execute(
                select(
                    CostEstimate.provider_id, CostEstimate.model, CostEstimate.samples, CostEstimate.mean_nano_usd
                ).where(tuple_(CostEstimate.provider_id, CostEstimate.model).in_(part))
            )
            found.update({(p, m): (samples, mean) for p, m, samples, mean in rows})
        return found

    async def default_estimates(self, session: AsyncSession, provider_ids: Iterable[str]) -> dict[str, int]:
        ids = sorted(set(provider_ids))
        if not ids:
            return {}
        rows = await session.execute(
            select(Provider.id, Provider.default_estimate_nano_usd).where(Provider.id.in_(ids))
        )
        return {pid: default for pid, default in rows}

    async def estimate_one(self, session: AsyncSession, provider_id: str, model: str) -> tuple[int, int, int] | None:
        """(default, samples, mean) for one key in one query; None when the provider is unknown."""
        row = (
            await session.execute(
                select(Provider.default_estimate_nano_usd, CostEstimate.samples, CostEstimate.mean_nano_usd)
                .select_from(Provider)
                .outerjoin(CostEstimate, (CostEstimate.provider_id == Provider.id) & (CostEstimate.model == model))
                .where(Provider.id == provider_id)
            )
        ).first()
        if row is None:
            return None
        default, samples, mean = row
        return default, samples or 0, mean or 0

    async def upsert_estimates(
        self, session: AsyncSession, values: dict[tuple[str, str], tuple[int, int]], *, now: datetime
    ) -> None:
        """Write (samples, mean) per key, in key order so concurrent writers lock rows alike."""
        rows = [
            {"provider_id": p, "model": m, "samples": samples, "mean_nano_usd": mean, "updated_at": now}
            for (p, m), (samples, mean) in sorted(values.items())
        ]
        for part in chunks(rows, CHUNK):
            insert = upsert_insert(session, CostEstimate).values(list(part))
            await session.execute(
                insert.on_conflict_do_update(
                    index_elements=[CostEstimate.provider_id, CostEstimate.model],
                    set_={
                        "samples": insert.excluded.samples,
                        "mean_nano_usd": insert.excluded.mean_nano_usd,
                        "updated_at": insert.excluded.updated_at,
                    },
                )
            )


hold_repository = HoldRepository()
estimate_repository = EstimateRepository()
