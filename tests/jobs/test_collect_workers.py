"""Real worker processes (``metering jobs run-once collect-costs``): killed at each step, or racing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from jobs.collect_costs import run_once
from metering.config import Settings
from metering.db import Database
from metering.models import UsageRecord
from simulator.server import SimulatorHandle
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY
from tests.jobs.conftest import assert_priced_exactly_once, make_backlog, statuses

ROOT = Path(__file__).resolve().parents[2]


def _worker_env(settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "METERING_DATABASE_URL": settings.database_url,
        "METERING_DATA_DIR": str(tmp_path / "worker"),
        "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
        "METERING_SECRET_KEY": TEST_SECRET_KEY,
        "METERING_JWT_SECRET": TEST_JWT_SECRET,
        **extra,
    }


def _start_worker(env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "cli.main", "jobs", "run-once", "collect-costs"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_pause(worker: subprocess.Popen, point: str, timeout: float = 30.0) -> None:
    """Read the worker's stderr until it says it paused at ``point``."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = worker.stderr.readline()
        if not line and worker.poll() is not None:
            break
        seen.append(line)
        if line.strip() == f"paused at {point}":
            return
    worker.kill()
    raise AssertionError(f"worker never paused at {point}: {''.join(seen)[-2000:]}")


class TestKilledWorker:
    @pytest.mark.parametrize("point", ["after_claim", "after_answer", "mid_transaction"])
    async def test_a_worker_killed_at_any_step_loses_nothing_and_prices_nothing_twice(
        self, db: Database, simulator: SimulatorHandle, settings: Settings, tmp_path: Path, point: str
    ) -> None:
        backlog = await make_backlog(db, simulator, count=30)
        # A second ask answers a revised cost: the cost priced is the one of the answer that was applied.
        simulator.set_faults(revise_on_second_ask=True, revise_delta_nano_usd=7_000)
        env = _worker_env(settings, tmp_path, METERING_TEST_PAUSE_AT=point, METERING_COST_LEASE_SECONDS="1")
        worker = _start_worker(env)
        try:
            _wait_for_pause(worker, point)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        assert await statuses(db) == {"pending": 30}

        time.sleep(1.1)  # the killed worker's lease lapses
        summary = await run_once(db)

        assert "priced=30" in summary
        asked_before = point != "after_claim"
        expected = {row: cost + (7_000 if asked_before else 0) for row, cost in backlog.cost_by_row().items()}
        await assert_priced_exactly_once(db, expected)
        assert set(simulator.stats()["asks"].values()) == {2 if asked_before else 1}

    async def test_a_live_worker_whose_lease_lapsed_does_not_write_what_another_took_over(
        self, db: Database, simulator: SimulatorHandle, settings: Settings, tmp_path: Path
    ) -> None:
        backlog = await make_backlog(db, simulator, count=10)
        env = _worker_env(
            settings,
            tmp_path,
            METERING_TEST_PAUSE_AT="after_answer",
            METERING_TEST_PAUSE_SECONDS="3",
            METERING_COST_LEASE_SECONDS="1",
        )
        simulator.set_faults(revise_on_second_ask=True, revise_delta_nano_usd=7_000)
        worker = _start_worker(env)
        _wait_for_pause(worker, "after_answer")
        time.sleep(1.1)
        assert "priced=10" in await run_once(db)  # takes over: second ask, revised costs
        out, err = worker.communicate(timeout=30)  # the first worker wakes and finds its lease gone

        assert worker.returncode == 0, err
        assert "priced=0" in out and "lost_lease=10" in out
        await assert_priced_exactly_once(db, {row: cost + 7_000 for row, cost in backlog.cost_by_row().items()})


class TestConcurrentWorkers:
    async def test_two_workers_on_one_backlog_price_each_request_once(
        self, db: Database, simulator: SimulatorHandle, settings: Settings, tmp_path: Path
    ) -> None:
        backlog = await make_backlog(db, simulator, count=600)
        simulator.set_faults(slow_seconds=0.05)
        env = _worker_env(settings, tmp_path, METERING_COST_BATCH_SIZE="50")
        workers = [_start_worker(env) for _ in range(2)]
        outputs = [worker.communicate(timeout=120) for worker in workers]

        assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in outputs]
        priced = [int(out.split("priced=")[1].split()[0]) for out, _ in outputs]
        assert sum(priced) == 600
        await assert_priced_exactly_once(db, backlog.cost_by_row())
        # No request was even asked twice: a live lease is never taken over.
        assert set(simulator.stats()["asks"].values()) == {1}


class TestLeaseKinds:
    async def test_a_live_lease_is_skipped_by_another_worker_and_held_leases_write_nothing(
        self, db: Database, simulator: SimulatorHandle, settings: Settings, tmp_path: Path
    ) -> None:
        backlog = await make_backlog(db, simulator, count=12)
        env = _worker_env(settings, tmp_path, METERING_TEST_PAUSE_AT="after_claim", METERING_TEST_PAUSE_SECONDS="2")
        worker = _start_worker(env)
        _wait_for_pause(worker, "after_claim")

        assert "priced=0" in await run_once(db)  # every row is the paused worker's
        async with db.session_scope() as session:
            written = await session.scalar(select(func.count()).where(UsageRecord.lease_owner.is_not(None)))
        # PostgreSQL: the lease is the worker's row locks, nothing is written to claim.
        # SQLite: the lease is written on the rows and committed before the provider is asked.
        assert written == (0 if db.dialect == "postgresql" else 12)

        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "priced=12" in out and "lost_lease=0" in out
        await assert_priced_exactly_once(db, backlog.cost_by_row())
        assert set(simulator.stats()["asks"].values()) == {1}

    async def test_the_lease_timeout_ends_with_the_batch_transaction(
        self, db: Database, simulator: SimulatorHandle, backend: str
    ) -> None:
        if backend != "postgres":
            pytest.skip("SQLite leases are written on the rows, with no server-side timeout")
        await make_backlog(db, simulator, count=3)
        assert "priced=3" in await run_once(db)
        # The pooled connections the job used are back at the server's default (no timeout).
        async with db.session_scope() as session:
            assert await session.scalar(text("SHOW idle_in_transaction_session_timeout")) == "0"
