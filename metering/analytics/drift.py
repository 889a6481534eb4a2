"""Estimate drift: how far the estimates behind holds and pending amounts were from the prices reported.

Per provider and model of one period: the mean estimate, the mean price, the mean error
(price - estimate; positive = estimates were low) and the p95 of the absolute error, all
integer nano-USD. Means are floor divisions (Python's ``//``, towards -inf), so a mean
error of -40/3 is -14; the p95 is the nearest-rank value, one of the observed errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from metering.analytics.drift_repository import drift_repository


@dataclass(frozen=True, slots=True)
class ModelDrift:
    """One (provider, model) of a period; fields in the order of the ``drift`` export columns."""

    provider: str
    model: str
    period: str
    requests: int
    mean_estimate_nano_usd: int
    mean_price_nano_usd: int
    mean_error_nano_usd: int
    p95_abs_error_nano_usd: int

    def as_row(self) -> tuple[str, str, str, int, int, int, int, int]:
        return (
            self.provider,
            self.model,
            self.period,
            self.requests,
            self.mean_estimate_nano_usd,
            self.mean_price_nano_usd,
            self.mean_error_nano_usd,
            self.p95_abs_error_nano_usd,
        )


def drift_from_sums(row: tuple[Any, ...]) -> ModelDrift:
    """A raw ``(provider, model, period, requests, estimate_sum, price_sum, p95)`` row as a ``ModelDrift``.

    PostgreSQL sums BIGINT into NUMERIC; ``int()`` takes the exact integer back out.
    """
    provider, model, period, requests, estimate_sum, price_sum, p95 = row
    requests, estimate_sum, price_sum = int(requests), int(estimate_sum), int(price_sum)
    return ModelDrift(
        provider=provider,
        model=model,
        period=period,
        requests=requests,
        mean_estimate_nano_usd=estimate_sum // requests,
        mean_price_nano_usd=price_sum // requests,
        mean_error_nano_usd=(price_sum - estimate_sum) // requests,
        p95_abs_error_nano_usd=int(p95),
    )


def drift_export_row(row: tuple[Any, ...]) -> tuple[str, str, str, int, int, int, int, int]:
    """A raw row as a row of the ``drift`` finance export."""
    return drift_from_sums(row).as_row()


class DriftService:
    async def estimate_drift(
        self, session: AsyncSession, *, period: str, account: str | None = None
    ) -> list[ModelDrift]:
        """The period's drift per (provider, model), ordered; only ``account``'s requests when given."""
        rows = await drift_repository.drift_sums(session, period=period, account=account)
        return [drift_from_sums(row) for row in rows]


drift_service = DriftService()
