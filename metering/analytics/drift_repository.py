"""SQL of the estimate drift report: one pass over a period's priced requests, per provider and model.

The p95 is a nearest-rank value picked with window functions (ROW_NUMBER and COUNT over
the group), which SQLite (3.25+) and PostgreSQL both run: the database sorts, and what
comes back is one row per (provider, model), so memory never holds a request list.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import UsageRecord

P95_PERCENT = 95


def drift_statement(*, period: str, account: str | None = None) -> Select[*tuple[Any, ...]]:
    """Rows ``(provider_id, model, period, requests, estimate_sum, price_sum, p95_abs_error)``, ordered.

    Only ``priced`` requests with an estimate above zero count: an estimate of 0 means none
    was made (custom-key, quarantined at record time, or a provider without a default).
    ``account`` narrows the report to the requests billed to that account.
    """
    error = UsageRecord.cost_nano_usd - UsageRecord.estimate_nano_usd
    group = (UsageRecord.provider_id, UsageRecord.model)
    conditions = [UsageRecord.period == period, UsageRecord.status == "priced", UsageRecord.estimate_nano_usd > 0]
    if account is not None:
        conditions.append(UsageRecord.billing_account == account)
    ranked = (
        select(
            UsageRecord.provider_id.label("provider_id"),
            UsageRecord.model.label("model"),
            UsageRecord.period.label("period"),
            UsageRecord.estimate_nano_usd.label("estimate"),
            UsageRecord.cost_nano_usd.label("price"),
            func.abs(error).label("abs_error"),
            # Ties in the absolute error are broken by id so the rank is deterministic.
            func.row_number().over(partition_by=group, order_by=(func.abs(error), UsageRecord.id)).label("position"),
            func.count().over(partition_by=group).label("group_size"),
        )
        .where(*conditions)
        .subquery("ranked")
    )
    # Nearest rank, 1-based: ceil(95 * n / 100), in integers (``//`` renders as integer division).
    p95_position = (ranked.c.group_size * P95_PERCENT + 99) // 100
    return (
        select(
            ranked.c.provider_id,
            ranked.c.model,
            ranked.c.period,
            func.count(),
            func.sum(ranked.c.estimate),
            func.sum(ranked.c.price),
            func.max(case((ranked.c.position == p95_position, ranked.c.abs_error))),
        )
        .group_by(ranked.c.provider_id, ranked.c.model, ranked.c.period)
        .order_by(ranked.c.provider_id, ranked.c.model)
    )


class DriftRepository:
    async def drift_sums(
        self, session: AsyncSession, *, period: str, account: str | None = None
    ) -> list[tuple[Any, ...]]:
        """The raw per-(provider, model) rows of ``drift_statement``."""
        result = await session.execute(drift_statement(period=period, account=account))
        return [tuple(row) for row in result]


drift_repository = DriftRepository()
