"""Estimated cost of a request, per (provider, model): what a hold reserves before the price is known.

The estimate is a rolling mean of recent actual costs, kept in integer nano-USD:
the first ``WARMUP_SAMPLES`` observations form a running arithmetic mean, after
that each observation moves the mean by 1/``WARMUP_SAMPLES`` of its distance
(an exponential mean). Every step rounds half up to the nano, so a constant cost
``c`` gives the estimate ``c`` exactly and the mean always lies between the
smallest and the largest observation. Without samples, the provider's
configured ``default_estimate_nano_usd`` is used.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from metering.holds.repository import estimate_repository
from metering.money import div_half_up
from metering.periods import utcnow

WARMUP_SAMPLES = 16
# The hot path keeps estimates in process this long; a new mean reaches other
# processes within this many seconds (the mean moves slowly, so this is harmless).
CACHE_TTL_SECONDS = 5.0
CACHE_MAX_ENTRIES = 50_000


def next_mean(samples: int, mean: int, cost: int) -> tuple[int, int]:
    """(samples, mean) after one more observed ``cost``."""
    weight = samples + 1 if samples < WARMUP_SAMPLES else WARMUP_SAMPLES
    return samples + 1, mean + div_half_up(cost - mean, weight)


def fold_costs(samples: int, mean: int, costs: Iterable[int]) -> tuple[int, int]:
    for cost in costs:
        samples, mean = next_mean(samples, mean, cost)
    return samples, mean


class EstimateService:
    def __init__(self) -> None:
        # Per engine, so each database (and each test's) has its own cache.
        self._cache: weakref.WeakKeyDictionary[object, dict[tuple[str, str], tuple[float, int]]] = (
            weakref.WeakKeyDictionary()
        )

    def _entries(self, session: AsyncSession) -> dict[tuple[str, str], tuple[float, int]]:
        engine = session.bind
        entries = self._cache.get(engine)
        if entries is None:
            entries = self._cache[engine] = {}
        return entries

    async def estimate_for(self, session: AsyncSession, provider: str, model: str) -> int:
        """The hot path's estimate for one (provider id, model); 0 for an unknown provider."""
        entries = self._entries(session)
        key = (provider, model)
        cached = entries.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < CACHE_TTL_SECONDS:
            return cached[1]
        row = await estimate_repository.estimate_one(session, provider, model)
        if row is None:
            return 0
        default, samples, mean = row
        value = mean if samples > 0 else default
        if len(entries) >= CACHE_MAX_ENTRIES:
            entries.clear()
        entries[key] = (now, value)
        return value

    async def estimate_for_many(self, session: AsyncSession, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(provider, model) → estimate for every key; unknown providers get 0."""
        if not keys:
            return {}
        rows = await estimate_repository.estimate_rows(session, list(keys))
        defaults = await estimate_repository.default_estimates(session, {p for p, _ in keys})
        result = {}
        for key in keys:
            samples, mean = rows.get(key, (0, 0))
            result[key] = mean if samples > 0 else defaults.get(key[0], 0)
        return result

    async def observe_costs(self, session: AsyncSession, samples: list[tuple[str, str, int]]) -> None:
        """Fold actual costs (provider, model, cost) into the rolling means, one upsert per batch.

        Concurrent observers of the same key may lose each other's samples (last
        writer wins); for an estimate that is harmless. Costs of unregistered
        providers and negative costs are ignored. Call it last in a transaction
        that also locks account rows, so it never waits while holding them.
        """
        by_key: dict[tuple[str, str], list[int]] = {}
        for provider_id, model, cost in samples:
            if cost >= 0:
                by_key.setdefault((provider_id, model), []).append(cost)
        if not by_key:
            return
        known = await estimate_repository.default_estimates(session, {p for p, _ in by_key})
        by_key = {key: costs for key, costs in by_key.items() if key[0] in known}
        current = await estimate_repository.estimate_rows(session, list(by_key))
        updated = {key: fold_costs(*current.get(key, (0, 0)), costs) for key, costs in by_key.items()}
        await estimate_repository.upsert_estimates(session, updated, now=utcnow())
        entries = self._entries(session)
        now = time.monotonic()
        for key, (_, mean) in updated.items():
            entries[key] = (now, mean)


estimates_service = EstimateService()
