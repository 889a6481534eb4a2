"""An archive killed at any step loses nothing, leaves ``metering verify`` clean, and a rerun finishes it.

Each case runs ``metering archive`` as a real process with ``METERING_ARCHIVE_KILL_AT`` naming a
step: the process sends itself SIGKILL on reaching it, which simulates an operator's ``kill -9``
(or a crash) at that point: no handler, no cleanup, no flush.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from metering.archive.files import read_figures, sha256_of
from metering.archive.repository import ARCHIVED_TABLES
from metering.archive.service import KILL_AT_VARIABLE, STEPS
from metering.config import set_settings
from metering.db import Database
from metering.ledger.verify import verify
from metering.models import ArchivedPeriod
from tests.conftest import make_settings
from tests.metering.archive.world import World, build_world, month_rows, scratch_database

ROOT = Path(__file__).resolve().parents[3]
# (step, which month: 0 the first, 1 the second)
CASES = [(step, 0) for step in STEPS] + [("writing", 1), ("partition", 1)]


@pytest.fixture
def pg_url(postgres_session_url: str | None, tmp_path: Path) -> Iterator[str]:
    if postgres_session_url is None:
        pytest.skip("PostgreSQL not reachable")
    with scratch_database() as url:
        set_settings(make_settings(url, tmp_path))
        try:
            yield url
        finally:
            set_settings(None)


def _archive(url: str, before: str, out: Path, data_dir: Path, kill_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METERING_DATABASE_URL": url, "METERING_DATA_DIR": str(data_dir)}
    env.pop(KILL_AT_VARIABLE, None)
    if kill_at is not None:
        env[KILL_AT_VARIABLE] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "archive", "--before", before, "--out", str(out), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def _world(url: str) -> World:
    db = Database(url)
    try:
        return await build_world(db)
    finally:
        await db.dispose()


async def _state(url: str, world: World, out: Path) -> dict[str, str]:
    """Per month, where its rows are; every one of them somewhere, and verify clean."""
    db = Database(url)
    try:
        report = await verify(db)
        assert report.ok, [line for check in report.checks for line in check.breaches]
        where = {}
        async with db.session_scope() as session:
            recorded = {row.period: row for row in await session.scalars(select(ArchivedPeriod))}
        for month in world.months:
            rows = await month_rows(db, month)
            if month not in recorded:
                # Not recorded: the database still has every row, whatever files were left behind.
                assert rows == world.rows[month]
                where[month] = "database"
                continue
            # Recorded: the files are complete and match what the database had.
            manifest = json.loads((out / month / "manifest.json").read_text())
            for archived in ARCHIVED_TABLES:
                path = out / month / f"{archived.name}.parquet"
                figures = manifest["tables"][archived.name]
                assert figures["sha256"] == sha256_of(path)
                assert read_figures(path, archived.sums).rows == figures["rows"] == world.rows[month][archived.name]
            where[month] = "dropped" if recorded[month].dropped_at is not None else "files"
        return where
    finally:
        await db.dispose()


@pytest.mark.parametrize(("step", "month"), CASES, ids=[f"{step}-{month}" for step, month in CASES])
def test_a_kill_at_each_step_loses_nothing_and_a_rerun_finishes(
    pg_url: str, tmp_path: Path, step: str, month: int
) -> None:
    world = asyncio.run(_world(pg_url))
    out = tmp_path / "archive"
    killed = _archive(pg_url, world.current, out, tmp_path, f"{step}:{world.months[month]}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    asyncio.run(_state(pg_url, world, out))

    finished = _archive(pg_url, world.current, out, tmp_path, None)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert asyncio.run(_state(pg_url, world, out)) == dict.fromkeys(world.months, "dropped")
    assert not list(out.rglob(".*.partial"))
