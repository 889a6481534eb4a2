"""The collect-costs job against a real simulated provider: happy path, bad answers, missing IDs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from jobs.collect_costs import run_once
from metering import metrics
from metering.config import Settings, set_settings
from metering.db import Database
from metering.models import UsageRecord
from metering.periods import utcnow
from simulator.server import SimulatorHandle
from tests.conftest import make_settings
from tests.jobs.conftest import assert_priced_exactly_once, make_backlog, statuses


def _sample(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class TestHappyPath:
    async def test_prices_every_pending_request_once(self, db: Database, simulator: SimulatorHandle) -> None:
        backlog = await make_backlog(db, simulator, count=25)
        before = _sample("metering_requests_priced_total", provider="together")

        summary = await run_once(db)

        assert "priced=25" in summary
        await assert_priced_exactly_once(db, backlog.cost_by_row())
        assert _sample("metering_requests_priced_total", provider="together") - before == 25
        assert _sample("metering_oldest_pending_seconds", provider="together") == 0.0
        # A second pass finds nothing to ask.
        calls = simulator.stats()["cost_calls"]
        assert "priced=0" in await run_once(db)
        assert simulator.stats()["cost_calls"] == calls

    async def test_batches_never_exceed_the_batch_size(
        self, db: Database, simulator: SimulatorHandle, settings: Settings, tmp_path
    ) -> None:
        set_settings(make_settings(settings.database_url, tmp_path, cost_batch_size=10))
        backlog = await make_backlog(db, simulator, count=25)

        summary = await run_once(db)

        assert "batches=3" in summary
        assert simulator.stats()["cost_calls"] == 3
        await assert_priced_exactly_once(db, backlog.cost_by_row())


class TestBatchSizeSetting:
    def test_more_than_ten_thousand_is_refused_at_startup(self, tmp_path) -> None:
        with pytest.raises(ValueError, match="exceeds the protocol maximum of 10000"):
            make_settings("sqlite+aiosqlite:///x.db", tmp_path, cost_batch_size=10_001)

    def test_ten_thousand_is_allowed(self, tmp_path) -> None:
        assert make_settings("sqlite+aiosqlite:///x.db", tmp_path, cost_batch_size=10_000).cost_batch_size == 10_000


BAD_VALUES = ["bool", "float", "float_integral", "string", "null", "nan", "infinity", "negative", "over_ceiling"]
QUARANTINE_KIND = {"float_integral": "float", "nan": "non_finite", "infinity": "non_finite"}


class TestBadValues:
    @pytest.mark.parametrize("kind", BAD_VALUES)
    async def test_one_bad_value_quarantines_that_request_only(
        self, db: Database, simulator: SimulatorHandle, kind: str
    ) -> None:
        backlog = await make_backlog(db, simulator, count=5)
        simulator.set_faults(bad_values={"req-00002": kind}, ceiling_nano_usd=100_000_000_000)
        metric_kind = QUARANTINE_KIND.get(kind, kind)
        before = _sample("metering_requests_quarantined_total", provider="together", reason=metric_kind)

        await run_once(db)

        expected = backlog.cost_by_row()
        bad_row = expected.pop(backlog.ids["req-00002"])
        assert bad_row == 100_002
        await assert_priced_exactly_once(db, expected)
        async with db.session_scope() as session:
            record = await session.get(UsageRecord, backlog.ids["req-00002"])
            assert record.status == "quarantined"
            assert record.cost_nano_usd is None
            assert record.quarantine_reason.startswith("costNanoUsd")
        assert _sample("metering_requests_quarantined_total", provider="together", reason=metric_kind) - before == 1


class TestMissingIds:
    async def test_missing_id_stays_pending_with_backoff_then_is_priced(
        self, db: Database, simulator: SimulatorHandle
    ) -> None:
        backlog = await make_backlog(db, simulator, count=4)
        simulator.set_faults(missing_ids=["req-00001"])
        started = utcnow()

        await run_once(db)

        async with db.session_scope() as session:
            record = await session.get(UsageRecord, backlog.ids["req-00001"])
            assert (record.status, record.attempts, record.lease_owner) == ("pending", 1, None)
            assert record.next_attempt_at > started
        assert await statuses(db) == {"priced": 3, "pending": 1}
        # Not asked again before its back-off ends, even by an immediate second pass.
        simulator.set_faults()
        calls = simulator.stats()["cost_calls"]
        async with db.session_scope() as session:
            await session.execute(
                update(UsageRecord)
                .where(UsageRecord.id == backlog.ids["req-00001"])
                .values(next_attempt_at=utcnow() + timedelta(hours=1))
            )
        await run_once(db)
        assert simulator.stats()["cost_calls"] == calls
        async with db.session_scope() as session:
            await session.execute(
                update(UsageRecord).where(UsageRecord.id == backlog.ids["req-00001"]).values(next_attempt_at=utcnow())
            )
        await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())

    async def test_a_fraction_missing_on_every_ask_drains_over_several_passes(
        self, db: Database, simulator: SimulatorHandle
    ) -> None:
        backlog = await make_backlog(db, simulator, count=40)
        simulator.set_faults(missing_fraction=0.5)

        await run_once(db)
        first = await statuses(db)
        assert 0 < first.get("pending", 0) < 40 and first["pending"] + first["priced"] == 40
        for _ in range(30):
            if await statuses(db) == {"priced": 40}:
                break
            await asyncio.sleep(0.25)  # the tests' policy re-asks a missing ID after 0.05–0.2 s
            await run_once(db)
        await assert_priced_exactly_once(db, backlog.cost_by_row())

    async def test_missing_past_the_maximum_age_becomes_unpriced(
        self, db: Database, simulator: SimulatorHandle, settings: Settings
    ) -> None:
        backlog = await make_backlog(db, simulator, count=3)
        old = utcnow() - timedelta(seconds=settings.pending_max_age_seconds + 60)
        async with db.session_scope() as session:
            await session.execute(
                update(UsageRecord)
                .where(UsageRecord.request_id.in_(["req-00000", "req-00001"]))
                .values(received_at=old)
            )
        simulator.set_faults(missing_ids=["req-00000", "req-00002"])
        before = _sample("metering_requests_unpriced_total", provider="together")

        await run_once(db)

        async with db.session_scope() as session:
            found = dict((await session.execute(select(UsageRecord.request_id, UsageRecord.status))).all())
        # Old and missing → unpriced; old but answered → priced; young and missing → still pending.
        assert found == {"req-00000": "unpriced", "req-00001": "priced", "req-00002": "pending"}
        assert _sample("metering_requests_unpriced_total", provider="together") - before == 1
        await assert_priced_exactly_once(db, {backlog.ids["req-00001"]: 100_001})
