"""Provider faults during collection: back-off, Retry-After, circuit breaker, bad bodies, slow providers."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, update

from jobs.collect_costs import run_once
from metering import metrics
from metering.config import Settings, set_settings
from metering.db import Database
from metering.models import Provider, ProviderCollectionState, UsageRecord
from metering.periods import utcnow
from simulator.server import SimulatorHandle, simulator_in_thread
from tests.conftest import make_settings
from tests.jobs.conftest import assert_priced_exactly_once, collection_state, make_backlog, statuses


def _errors(kind: str, provider: str = "together") -> float:
    return (
        metrics.registry.get_sample_value("metering_provider_errors_total", {"provider": provider, "kind": kind}) or 0.0
    )


async def _leases(db: Database) -> int:
    async with db.session_scope() as session:
        return await session.scalar(select(func.count()).where(UsageRecord.lease_owner.is_not(None)))


async def _end_backoff(db: Database, provider_id: str = "together") -> None:
    async with db.session_scope() as session:
        await session.execute(
            update(ProviderCollectionState)
            .where(ProviderCollectionState.provider_id == provider_id)
            .values(backoff_until=utcnow())
        )


class TestWholeBatchFailures:
    @pytest.mark.parametrize(
        ("faults", "kind"),
        [
            ({"error_burst": 1}, "5xx"),
            ({"truncated_json": 1}, "bad_response"),
            ({"html_200": 1}, "bad_response"),
            ({"wrong_content_type": 1}, "bad_response"),
        ],
    )
    async def test_nothing_is_written_the_provider_backs_off_then_recovers(
        self, db: Database, simulator: SimulatorHandle, faults: dict, kind: str
    ) -> None:
        backlog = await make_backlog(db, simulator, count=6)
        simulator.set_faults(**faults)
        before = _errors(kind)

        summary = await run_once(db)

        assert f"failed={kind}" in summary
        assert await statuses(db) == {"pending": 6}
        assert await _leases(db) == 0
        state = await collection_state(db, "together")
        assert state.consecutive_failures == 1
        assert state.backoff_until > utcnow()
        assert state.last_error.startswith(kind)
        assert _errors(kind) - before == 1
        # Backed off: an immediate pass does not ask.
        calls = simulator.stats()["cost_calls"]
        assert "failed=backoff" in await run_once(db)
        assert simulator.stats()["cost_calls"] == calls
        await _end_backoff(db)
        await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())
        state = await collection_state(db, "together")
        assert (state.consecutive_failures, state.backoff_until, state.circuit_open_until) == (0, None, None)

    async def test_timeout(self, db: Database, simulator: SimulatorHandle, settings: Settings, tmp_path) -> None:
        set_settings(make_settings(settings.database_url, tmp_path, cost_read_timeout_seconds=0.2))
        backlog = await make_backlog(db, simulator, count=3)
        simulator.set_faults(slow_seconds=0.6)

        assert "failed=timeout" in await run_once(db)
        assert await statuses(db) == {"pending": 3}

        simulator.set_faults()
        await _end_backoff(db)
        await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())

    @pytest.mark.parametrize("retry_after_format", ["seconds", "http-date"])
    async def test_429_honours_retry_after(
        self, db: Database, simulator: SimulatorHandle, retry_after_format: str
    ) -> None:
        backlog = await make_backlog(db, simulator, count=3)
        simulator.set_faults(rate_limit_burst=1, retry_after_seconds=120, retry_after_format=retry_after_format)

        assert "failed=429" in await run_once(db)

        state = await collection_state(db, "together")
        waited = (state.backoff_until - utcnow()).total_seconds()
        assert 110 <= waited <= 133  # 120 s, spread by up to 10 %, never the short default back-off
        await _end_backoff(db)
        await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())


class TestCircuitBreaker:
    async def test_opens_after_consecutive_failures_then_half_opens_for_one_probe(
        self, db: Database, simulator: SimulatorHandle, settings: Settings, tmp_path
    ) -> None:
        set_settings(make_settings(settings.database_url, tmp_path, cost_batch_size=2))
        backlog = await make_backlog(db, simulator, count=6)
        simulator.set_faults(error_burst=3)
        for _ in range(3):  # three failures in a row open the circuit (the tests' policy)
            await _end_backoff(db)
            assert "failed=5xx" in await run_once(db)
        state = await collection_state(db, "together")
        assert state.consecutive_failures == 3 and state.circuit_open_until > utcnow()

        calls = simulator.stats()["cost_calls"]
        await _end_backoff(db)
        assert "failed=circuit_open" in await run_once(db)
        assert simulator.stats()["cost_calls"] == calls

        await asyncio.sleep(0.7)  # the cool-down ends: half-open, one probe batch of 2
        assert "batches=1 priced=2" in await run_once(db)
        state = await collection_state(db, "together")
        assert (state.consecutive_failures, state.circuit_open_until) == (0, None)
        assert "batches=2 priced=4" in await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())

    async def test_a_failed_probe_opens_the_circuit_again(self, db: Database, simulator: SimulatorHandle) -> None:
        await make_backlog(db, simulator, count=2)
        simulator.set_faults(error_burst=4)
        for _ in range(3):
            await _end_backoff(db)
            await run_once(db)
        await asyncio.sleep(0.7)
        await _end_backoff(db)
        assert "failed=5xx" in await run_once(db)
        state = await collection_state(db, "together")
        assert state.consecutive_failures == 4 and state.circuit_open_until > utcnow()
        assert await statuses(db) == {"pending": 2}

    async def test_a_long_outage_keeps_the_back_off_at_its_cap(self, db: Database, simulator: SimulatorHandle) -> None:
        await make_backlog(db, simulator, count=1)
        simulator.set_faults(error_burst=1)
        await run_once(db)
        async with db.session_scope() as session:
            await session.execute(
                update(ProviderCollectionState).values(
                    consecutive_failures=5_000, backoff_until=None, circuit_open_until=None
                )
            )
        simulator.set_faults(error_burst=1)

        assert "failed=5xx" in await run_once(db)

        state = await collection_state(db, "together")
        assert state.consecutive_failures == 5_001
        assert (state.backoff_until - utcnow()).total_seconds() <= 10.0  # the tests' cap
        assert await statuses(db) == {"pending": 1}


class TestAnswerQuirks:
    async def test_duplicate_ids_first_answer_wins(self, db: Database, simulator: SimulatorHandle) -> None:
        backlog = await make_backlog(db, simulator, count=10)
        simulator.set_faults(duplicate_fraction=1.0)  # every ID again at the end, at cost + 1

        assert "priced=10" in await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())

    async def test_unknown_ids_are_ignored(self, db: Database, simulator: SimulatorHandle) -> None:
        backlog = await make_backlog(db, simulator, count=4)
        simulator.set_faults(unknown_ids=5)

        assert "priced=4" in await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())
        assert await statuses(db) == {"priced": 4}

    async def test_a_cost_revised_on_a_second_ask_is_applied_once_at_the_answer_that_was_applied(
        self, db: Database, simulator: SimulatorHandle
    ) -> None:
        backlog = await make_backlog(db, simulator, count=3)
        # First ask's answer is lost (truncated: nothing applied); the second ask revises each cost by +7,000.
        simulator.set_faults(truncated_json=1, revise_on_second_ask=True, revise_delta_nano_usd=7_000)
        await run_once(db)
        await _end_backoff(db)
        await run_once(db)
        await assert_priced_exactly_once(db, {row: cost + 7_000 for row, cost in backlog.cost_by_row().items()})
        # Priced requests are never asked again, so a third answer cannot change anything.
        asks = simulator.stats()["asks"]
        await run_once(db)
        assert simulator.stats()["asks"] == asks


class TestIsolation:
    async def test_a_slow_provider_never_delays_a_fast_one(self, db: Database, simulator: SimulatorHandle) -> None:
        with simulator_in_thread(seed=11) as slow:
            # "a-slow" sorts first: were providers asked one after the other, "b-fast" would wait for it.
            slow_backlog = await make_backlog(db, slow, count=20, provider_id="a-slow", prefix="s")
            fast_backlog = await make_backlog(db, simulator, count=20, provider_id="b-fast", prefix="f")
            slow.set_faults(slow_seconds=3.0)
            started = utcnow()

            await run_once(db)

        async with db.session_scope() as session:
            finished = dict(
                (
                    await session.execute(
                        select(UsageRecord.provider_id, func.max(UsageRecord.priced_at)).group_by(
                            UsageRecord.provider_id
                        )
                    )
                ).all()
            )
        assert finished["a-slow"] - started >= timedelta(seconds=3.0)
        assert finished["a-slow"] - finished["b-fast"] >= timedelta(seconds=1.5)
        await assert_priced_exactly_once(db, fast_backlog.cost_by_row() | slow_backlog.cost_by_row())

    async def test_with_more_providers_in_flight_than_connections_the_others_write_their_lease(
        self, db: Database, simulator: SimulatorHandle, settings: Settings, backend: str
    ) -> None:
        if backend != "postgres":
            pytest.skip("SQLite leases are always written on the rows")
        small = Database(settings.database_url, pool_size=1)  # one held lease, one overflow connection
        try:
            with simulator_in_thread(seed=13) as slow:
                slow_backlog = await make_backlog(db, slow, count=10, provider_id="a-slow", prefix="s")
                fast_backlog = await make_backlog(db, simulator, count=10, provider_id="b-fast", prefix="f")
                slow.set_faults(slow_seconds=2.0)
                started = utcnow()

                assert "priced=20" in await run_once(small)
        finally:
            await small.dispose()

        async with db.session_scope() as session:
            rows = (
                await session.execute(
                    select(
                        UsageRecord.provider_id, func.max(UsageRecord.priced_at), func.count(UsageRecord.lease_owner)
                    ).group_by(UsageRecord.provider_id)
                )
            ).all()
        finished = {provider: last for provider, last, _ in rows}
        written_leases = {provider: leased for provider, _, leased in rows}
        # One provider held the one slot; the other wrote its lease instead of waiting for a connection.
        assert sorted(written_leases.values()) == [0, 10]
        assert finished["b-fast"] - started < timedelta(seconds=1.5)
        await assert_priced_exactly_once(db, fast_backlog.cost_by_row() | slow_backlog.cost_by_row())

    async def test_an_unreachable_provider_is_logged_and_the_others_go_on(
        self, db: Database, simulator: SimulatorHandle
    ) -> None:
        good = await make_backlog(db, simulator, count=5, provider_id="good", prefix="g")
        with simulator_in_thread(seed=12) as gone:
            await make_backlog(db, gone, count=5, provider_id="gone", prefix="x")
        # ``gone`` has stopped: connections to it are refused.
        before = _errors("connect", "gone")
        started = time.perf_counter()

        summary = await run_once(db)

        assert time.perf_counter() - started < 5
        assert "gone: batches=0" in summary and "failed=connect" in summary
        assert await statuses(db, "gone") == {"pending": 5}
        assert _errors("connect", "gone") - before == 1
        await assert_priced_exactly_once(db, good.cost_by_row())

    async def test_a_provider_whose_token_cannot_be_decrypted_is_skipped(
        self, db: Database, simulator: SimulatorHandle
    ) -> None:
        good = await make_backlog(db, simulator, count=3, provider_id="good", prefix="g")
        await make_backlog(db, simulator, count=3, provider_id="rekeyed", prefix="r")
        async with db.session_scope() as session:
            await session.execute(
                update(Provider)
                .where(Provider.id == "rekeyed")
                .values(cost_token_encrypted=Fernet(Fernet.generate_key()).encrypt(b"t"))
            )

        summary = await run_once(db)

        assert "1 providers" in summary and "rekeyed" not in summary
        assert await statuses(db, "rekeyed") == {"pending": 3}
        await assert_priced_exactly_once(db, good.cost_by_row())
