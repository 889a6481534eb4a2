"""The scheduler registers every job, runs collect-costs on schedule, and the CLI runs one pass."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import httpx
from apscheduler.triggers.interval import IntervalTrigger

from jobs.collect_costs import run_once
from jobs.scheduler import JOBS, build_scheduler
from metering.db import Database
from simulator.server import SimulatorHandle
from tests.jobs.conftest import assert_priced_exactly_once, make_backlog, statuses

ROOT = Path(__file__).resolve().parents[2]


class TestRegistry:
    def test_every_job_of_the_command_line_is_registered(self) -> None:
        assert set(JOBS) == {
            "collect-costs",
            "grant-credits",
            "expire-holds",
            "close-period",
            "sync-stripe",
            "fold-usage-rollups",
            "deliver-webhooks",
            "create-partitions",
        }

    def test_every_job_module_has_an_async_run_once_taking_the_database(self) -> None:
        for name, spec in JOBS.items():
            function = importlib.import_module(spec.module).run_once
            assert inspect.iscoroutinefunction(function), name
            assert next(iter(inspect.signature(function).parameters)) == "database", name

    def test_collect_costs_runs_every_minute_one_instance_at_a_time(self, tmp_path: Path) -> None:
        database = Database(f"sqlite+aiosqlite:///{tmp_path}/x.db")
        scheduler = build_scheduler(database)
        job = scheduler.get_job("collect-costs")
        assert isinstance(job.trigger, IntervalTrigger) and job.trigger.interval.total_seconds() == 60
        assert job.max_instances == 1 and job.coalesce is True
        assert {j.id for j in scheduler.get_jobs()} == set(JOBS)


class TestScheduledRun:
    async def test_the_scheduler_collects_costs_at_start(self, db: Database, simulator: SimulatorHandle) -> None:
        backlog = await make_backlog(db, simulator, count=5)
        scheduler = build_scheduler(db, ["collect-costs"])
        scheduler.start()
        try:
            for _ in range(100):
                if await statuses(db) == {"priced": 5}:
                    break
                await asyncio.sleep(0.05)
        finally:
            scheduler.shutdown(wait=False)
        await assert_priced_exactly_once(db, backlog.cost_by_row())


class TestMetricsEndpoint:
    async def test_collection_metrics_show_on_the_api_when_the_job_runs_in_process(
        self, db: Database, simulator: SimulatorHandle, client: httpx.AsyncClient
    ) -> None:
        await make_backlog(db, simulator, count=3, provider_id="metrics-provider")
        await run_once(db)

        text = (await client.get("/metrics")).text

        assert 'metering_cost_batches_total{outcome="ok",provider="metrics-provider"}' in text
        assert 'metering_requests_priced_total{provider="metrics-provider"}' in text
        assert 'metering_cost_batch_seconds_count{provider="metrics-provider"}' in text
        assert 'metering_oldest_pending_seconds{provider="metrics-provider"} 0.0' in text


class TestCommandLine:
    def test_an_unknown_job_is_refused(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "jobs", "run-once", "no-such-job"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        assert "unknown job 'no-such-job'" in result.stderr
