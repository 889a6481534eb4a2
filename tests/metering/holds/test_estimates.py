"""The rolling mean of actual costs that sizes holds: integer, bounded, exact for constant costs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metering.db import Database
from metering.holds.estimates import WARMUP_SAMPLES, estimates_service, fold_costs, next_mean
from tests.factories.providers import create_provider

costs = st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=80)


class TestRollingMean:
    def test_warmup_is_the_arithmetic_mean(self) -> None:
        assert fold_costs(0, 0, [100, 200, 600]) == (3, 300)
        assert fold_costs(0, 0, [1, 2]) == (2, 2)  # 1.5 rounds half up

    def test_after_warmup_moves_a_sixteenth(self) -> None:
        samples, mean = fold_costs(0, 0, [1_600] * WARMUP_SAMPLES)
        assert (samples, mean) == (16, 1_600)
        assert next_mean(samples, mean, 3_200) == (17, 1_700)
        assert next_mean(samples, mean, 0) == (17, 1_500)

    @given(costs)
    def test_mean_stays_within_the_observed_range(self, values: list[int]) -> None:
        samples, mean = fold_costs(0, 0, values)
        assert samples == len(values)
        assert isinstance(mean, int)
        assert min(values) <= mean <= max(values)

    @given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=60))
    def test_constant_cost_is_exact(self, cost: int, count: int) -> None:
        assert fold_costs(0, 0, [cost] * count) == (count, cost)

    @given(costs, costs)
    def test_batches_fold_like_one_sequence(self, first: list[int], second: list[int]) -> None:
        assert fold_costs(*fold_costs(0, 0, first), second) == fold_costs(0, 0, first + second)


class TestEstimateService:
    async def test_default_until_observed(self, db: Database) -> None:
        async with db.session_scope() as session:
            await create_provider(session, "together", default_estimate_nano_usd=100_000)
            await create_provider(session, "fireworks-ai", default_estimate_nano_usd=7)
        keys = {("together", "a"), ("together", "b"), ("fireworks-ai", "a"), ("nowhere", "a")}
        async with db.session_scope() as session:
            assert await estimates_service.estimate_for_many(session, keys) == {
                ("together", "a"): 100_000,
                ("together", "b"): 100_000,
                ("fireworks-ai", "a"): 7,
                ("nowhere", "a"): 0,
            }
            assert await estimates_service.estimate_for(session, "together", "a") == 100_000
        async with db.session_scope() as session:
            await estimates_service.observe_costs(
                session, [("together", "a", 300), ("together", "a", 500), ("fireworks-ai", "a", 9), ("nowhere", "a", 5)]
            )
        async with db.session_scope() as session:
            assert await estimates_service.estimate_for_many(session, keys) == {
                ("together", "a"): 400,
                ("together", "b"): 100_000,
                ("fireworks-ai", "a"): 9,
                ("nowhere", "a"): 0,
            }
            assert await estimates_service.estimate_for(session, "together", "a") == 400
            assert await estimates_service.estimate_for(session, "nowhere", "a") == 0

    async def test_observations_accumulate_across_batches(self, db: Database) -> None:
        async with db.session_scope() as session:
            await create_provider(session, "together")
        values = [1_000 * i for i in range(1, 41)]
        for start in range(0, 40, 7):
            async with db.session_scope() as session:
                await estimates_service.observe_costs(
                    session, [("together", "m", v) for v in values[start : start + 7]]
                )
        async with db.session_scope() as session:
            assert await estimates_service.estimate_for_many(session, {("together", "m")}) == {
                ("together", "m"): fold_costs(0, 0, values)[1]
            }
