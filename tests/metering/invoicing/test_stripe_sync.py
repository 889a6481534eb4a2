"""Stripe sync against a real localstripe: one invoice item per line, never twice, even after kill -9."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs import sync_stripe
from metering.config import Settings
from metering.db import Database
from metering.invoicing.repository import invoicing_repository
from metering.invoicing.service import invoicing_service
from metering.invoicing.stripe_sync import PAUSE_ENV, stripe_sync
from metering.ledger.verify import verify
from metering.models import Account, InvoiceLine
from tests.metering.invoicing.helpers import charge, invoices
from tests.support import localstripe

SEPT = datetime(2026, 9, 10, 12, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[3]


async def closed_world(db: Database) -> None:
    """alice: two lines (together 124 cents, fireworks 3 cents); erin: one line (50 cents)."""
    await charge(db, account="alice", started_at=SEPT, costs={"a1": 1_234_567_890, "a2": 10_000_000})
    await charge(db, account="alice", started_at=SEPT, costs={"a3": 35_432_109}, provider="fireworks-ai")
    await charge(db, account="erin", started_at=SEPT, costs={"e1": 500_000_000})
    async with db.session_scope() as session:
        await invoicing_service.close_period(
            session, period="2026-09", force=True, now=datetime(2026, 11, 1, tzinfo=UTC)
        )


async def lines_by_id(db: Database) -> dict[int, InvoiceLine]:
    async with db.session_scope() as session:
        return {line.id: line for line in await session.scalars(select(InvoiceLine))}


async def customers(db: Database) -> dict[str, str | None]:
    async with db.session_scope() as session:
        return dict((await session.execute(select(Account.name, Account.stripe_customer_id))).all())


def stripe_items(settings: Settings) -> list[dict]:
    return localstripe.list_all(settings.stripe_api_base, "invoiceitems")


async def assert_one_item_per_line(db: Database, settings: Settings) -> None:
    items = stripe_items(settings)
    lines = await lines_by_id(db)
    by_line = {}
    for item in items:
        assert item["metadata"]["line_id"] not in by_line, f"line {item['metadata']['line_id']} sent twice"
        by_line[item["metadata"]["line_id"]] = item
    assert sorted(by_line) == sorted(str(i) for i, line in lines.items() if line.amount_cents)
    for line_id, line in lines.items():
        item = by_line[str(line_id)]
        assert (item["amount"], item["currency"], line.stripe_status) == (line.amount_cents, "usd", "sent")
        assert line.stripe_invoice_item_id == item["id"]
    known = await customers(db)
    for item in items:
        assert item["customer"] == known[item["metadata"]["account"]]
    assert len(localstripe.list_all(settings.stripe_api_base, "customers")) == 2


class TestSyncInvoices:
    async def test_sends_every_line_as_one_invoice_item(self, seeded: Database, stripe_settings: Settings) -> None:
        await closed_world(seeded)

        result = await stripe_sync.sync_invoices(seeded)

        assert (result.items_created, result.items_recovered, result.customers_created, result.invoices_sent) == (
            3,
            0,
            2,
            2,
        )
        amounts = sorted(item["amount"] for item in stripe_items(stripe_settings))
        assert amounts == [3, 50, 124]
        await assert_one_item_per_line(seeded, stripe_settings)
        found = await invoices(seeded)
        assert {key: i.status for key, i in found.items()} == {
            ("alice", "2026-09"): "sent",
            ("erin", "2026-09"): "sent",
        }
        # localstripe cannot make an invoice without a subscription: the step is retried on later runs.
        assert "No upcoming invoices" in found[("alice", "2026-09")].stripe_error
        assert (await verify(seeded)).ok

    async def test_rerun_creates_no_duplicates(self, seeded: Database, stripe_settings: Settings) -> None:
        await closed_world(seeded)
        await stripe_sync.sync_invoices(seeded)

        again = await stripe_sync.sync_invoices(seeded)

        assert (again.items_created, again.customers_created) == (0, 0)
        assert len(stripe_items(stripe_settings)) == 3
        await assert_one_item_per_line(seeded, stripe_settings)

    async def test_one_run_at_a_time_on_postgres(
        self, seeded: Database, stripe_settings: Settings, backend: str
    ) -> None:
        if backend != "postgres":
            pytest.skip("SQLite deployments run one process")
        await closed_world(seeded)
        async with seeded.engine.connect() as other_run:
            assert await invoicing_repository.try_sync_run_lock(seeded, other_run)
            skipped = await sync_stripe.run_once(seeded)
            await invoicing_repository.release_sync_run_lock(seeded, other_run)
        assert skipped == "stripe sync skipped: another sync-stripe run is in progress"
        assert stripe_items(stripe_settings) == []
        assert (await stripe_sync.sync_invoices(seeded)).items_created == 3

    async def test_nothing_is_sent_without_an_api_key(self, seeded: Database, settings: Settings) -> None:
        await closed_world(seeded)
        assert await sync_stripe.run_once(seeded) == "stripe sync skipped: STRIPE_API_KEY is not set"
        assert {line.stripe_status for line in (await lines_by_id(seeded)).values()} == {"pending"}


def run_job_until(step: str, settings: Settings, tmp_path: Path) -> None:
    """``metering jobs run-once sync-stripe`` in a subprocess, killed with SIGKILL when it reaches ``step``."""
    env = {
        **os.environ,
        "METERING_DATABASE_URL": settings.database_url,
        "METERING_SERVICE_TOKENS": settings.service_tokens,
        "METERING_SECRET_KEY": settings.secret_key,
        "METERING_JWT_SECRET": settings.jwt_secret,
        "METERING_DATA_DIR": str(tmp_path),
        "STRIPE_API_KEY": settings.stripe_api_key,
        "STRIPE_API_BASE": settings.stripe_api_base,
        PAUSE_ENV: step,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "jobs", "run-once", "sync-stripe"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    deadline, seen = time.monotonic() + 60, []
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"never paused at {step}: {''.join(seen)[-2000:]}") from None
            seen.append(line)
            if line.strip() == f"PAUSED AT {step}":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"never paused at {step}")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


async def until_the_killed_run_lets_go(db: Database) -> None:
    """The killed run's lock goes with its server process, which ends once the server notices the
    connection closed: on a busy machine, a moment after the kill."""
    deadline = time.monotonic() + 30
    async with db.engine.connect() as connection:
        while not await invoicing_repository.try_sync_run_lock(db, connection):
            assert time.monotonic() < deadline, "the killed run's lock was never released"
            await asyncio.sleep(0.05)
        await invoicing_repository.release_sync_run_lock(db, connection)
        await connection.commit()


class TestCrashSafety:
    @pytest.mark.parametrize("step", ["after_customer_create", "after_stripe_create", "after_line_write"])
    async def test_kill_at_any_step_then_rerun_sends_each_line_once(
        self, seeded: Database, stripe_settings: Settings, tmp_path: Path, step: str
    ) -> None:
        await closed_world(seeded)

        run_job_until(step, stripe_settings, tmp_path)
        await until_the_killed_run_lets_go(seeded)
        before = {line.id: line.stripe_status for line in (await lines_by_id(seeded)).values()}
        result = await stripe_sync.sync_invoices(seeded)

        if step == "after_customer_create":
            assert set(before.values()) == {"pending"}
            assert (result.customers_created, result.items_created, result.items_recovered) == (1, 3, 0)
        elif step == "after_stripe_create":
            # Stripe took the first line, the local write never happened: found by its metadata, not re-sent.
            assert set(before.values()) == {"pending"}
            assert (result.items_created, result.items_recovered) == (2, 1)
        else:
            assert sorted(before.values()) == ["pending", "pending", "sent"]
            assert (result.items_created, result.items_recovered) == (2, 0)
        await assert_one_item_per_line(seeded, stripe_settings)
        assert (await verify(seeded)).ok
