"""jobs.grant_credits.run_once: every account granted the current period, once, even when racing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from jobs.grant_credits import run_once
from metering.db import Database
from metering.ledger import codes
from metering.periods import current_period, period_bounds, set_clock_offset
from tests.factories.accounts import create_account
from tests.metering.ledger.helpers import balance, period_row, transactions

SEAT = 2_000_000_000
FREE = 100_000_000


@pytest.fixture(autouse=True)
def mid_period() -> Iterator[None]:
    """Away from a month's last hours, where a run grants the next month too (``test_grant_ahead.py``)."""
    start, _ = period_bounds(current_period())
    set_clock_offset(start + timedelta(days=10) - datetime.now(UTC))
    yield
    set_clock_offset(timedelta(0))


def _granted_nano_usd(summary: str) -> int:
    """The amount a summary says was granted now: ``format_usd`` shows nine decimals, so its digits are nano-USD."""
    shown = summary.split(", ")[1].split()[0]
    return int(shown.removeprefix("$").replace(",", "").replace(".", ""))


async def _accounts(db: Database) -> None:
    async with db.session_scope() as session:
        await create_account(session, "acme", plan="team", seats=3)
        await create_account(session, "alice", plan="pro")
        for i in range(20):
            await create_account(session, f"free{i:02d}", plan="free")


class TestRunOnce:
    async def test_grants_every_account(self, db: Database) -> None:
        await _accounts(db)
        summary = await run_once(db)
        assert summary == f"grant-credits {current_period()}: 22 account(s) checked, $10.000000000 granted now"
        async with db.session_scope() as session:
            assert (await period_row(session, "acme", current_period())).credits_granted_nano_usd == 3 * SEAT
            assert await balance(session, codes.credits_expense(current_period())) == 4 * SEAT + 20 * FREE

    async def test_second_run_grants_nothing(self, db: Database) -> None:
        await _accounts(db)
        await run_once(db)
        summary = await run_once(db)
        assert summary.endswith("$0.000000000 granted now")
        async with db.session_scope() as session:
            assert len(await transactions(session, kind=codes.GRANT)) == 22

    async def test_two_schedulers_racing_grant_exactly_once(self, db: Database, settings) -> None:
        await _accounts(db)
        other = Database(settings.database_url)
        try:
            first, second = await asyncio.gather(run_once(db), run_once(other))
        finally:
            await other.dispose()
        async with db.session_scope() as session:
            grants = await transactions(session, kind=codes.GRANT)
            assert len(grants) == 22
            assert len({g.account_name for g in grants}) == 22
            assert await balance(session, codes.credits_expense(current_period())) == 4 * SEAT + 20 * FREE
        # However the two interleaved, together they granted exactly the total once.
        granted = [_granted_nano_usd(summary) for summary in (first, second)]
        assert sum(granted) == 4 * SEAT + 20 * FREE
