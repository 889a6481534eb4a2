"""Credits granted ahead of their period: made by the grant-credits job in a month's last hours,
then set to the plan each account has once the period has begun (by its first decision, a posting
or the job's first run in it), after which the usual rules apply (SPEC §3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from jobs.grant_credits import run_once
from metering.accounts.service import AccountSync, account_service
from metering.authorize.service import AuthorizeRequest, authorize_service
from metering.config import Settings, set_settings
from metering.credits.service import credits_service, periods_to_grant
from metering.db import Database
from metering.ledger import codes
from metering.ledger.verify import verify
from metering.models import Account
from metering.periods import current_period, next_period, period_bounds, previous_period, set_clock_offset
from tests.metering.authorize.helpers import ESTIMATE, seed
from tests.metering.ledger.helpers import entries_sum, period_row, transactions

SEAT = 2_000_000_000
PERIOD = current_period()


@contextmanager
def clock_at(moment: datetime) -> Iterator[None]:
    set_clock_offset(moment - datetime.now(UTC))
    try:
        yield
    finally:
        set_clock_offset(timedelta(0))


def before_start(hours: float = 1) -> datetime:
    """``hours`` before the current period began: its predecessor's last hours."""
    return period_bounds(PERIOD)[0] - timedelta(hours=hours)


async def set_seats(db: Database, name: str, seats: int, plan: str = "team") -> None:
    async with db.session_scope() as session:
        await account_service.upsert_account(session, name=name, sync=AccountSync(kind="org", plan=plan, seats=seats))


async def grant_ahead(db: Database) -> str:
    """The grant-credits job as it runs an hour before the current period began."""
    with clock_at(before_start()):
        return await run_once(db)


async def authorize(db: Database, user: str, bill_to: str | None = None):
    return await authorize_service.authorize(
        db, request=AuthorizeRequest(user=user, bill_to=bill_to, provider="together", model="org/m")
    )


async def grant_keys(db: Database, account: str) -> list[str]:
    async with db.session_scope() as session:
        return [t.idempotency_key for t in await transactions(session, kind=codes.GRANT, account_name=account)]


async def row_of(db: Database, account: str, period: str = PERIOD):
    async with db.session_scope() as session:
        return await period_row(session, account, period)


async def assert_verified(db: Database) -> None:
    report = await verify(db)
    assert report.ok, [line for check in report.checks for line in check.breaches]


class TestWhenTheJobGrantsAhead:
    def test_only_in_the_last_hours_of_a_month(self, settings: Settings) -> None:
        start, end = period_bounds(PERIOD)
        assert periods_to_grant(end - timedelta(hours=5, minutes=55)) == [PERIOD, next_period(PERIOD)]
        assert periods_to_grant(end - timedelta(hours=6, minutes=5)) == [PERIOD]
        assert periods_to_grant(start + timedelta(minutes=5)) == [PERIOD]

    def test_never_when_turned_off(self, settings: Settings) -> None:
        set_settings(settings.model_copy(update={"credits_grant_ahead_hours": 0}))
        assert periods_to_grant(period_bounds(PERIOD)[1] - timedelta(minutes=1)) == [PERIOD]

    async def test_a_run_in_the_last_hours_grants_next_month_marked(self, db: Database) -> None:
        await seed(db)
        summary = await grant_ahead(db)
        previous = previous_period(PERIOD)
        assert summary.splitlines() == [
            f"grant-credits {previous}: 4 account(s) checked, $6.100000000 granted now",
            f"grant-credits {PERIOD} (ahead): 4 account(s) checked, $6.100000000 granted now",
        ]
        row = await row_of(db, "acme")
        assert (row.credits_granted_nano_usd, row.credits_granted_ahead) == (2 * SEAT, True)
        assert await grant_keys(db, "acme") == [f"grant:acme:{previous}", f"grant:acme:{PERIOD}"]
        async with db.session_scope() as session:
            (grant,) = await transactions(session, kind=codes.GRANT, account_name="acme", period=PERIOD)
            assert grant.memo == "team plan, 2 seat(s), ahead"
        await assert_verified(db)

    async def test_later_runs_grant_nothing_more_and_top_up_a_raise(self, db: Database) -> None:
        await seed(db)
        await grant_ahead(db)
        await set_seats(db, "acme", 3)
        with clock_at(before_start(hours=0.5)):
            summary = await run_once(db)
        assert (
            summary.splitlines()[1] == f"grant-credits {PERIOD} (ahead): 4 account(s) checked, $2.000000000 granted now"
        )
        row = await row_of(db, "acme")
        assert (row.credits_granted_nano_usd, row.credits_granted_ahead) == (3 * SEAT, True)


class TestOnceThePeriodHasBegun:
    async def test_a_plan_unchanged_is_decided_at_once_and_its_grant_kept(self, db: Database) -> None:
        await seed(db)
        await grant_ahead(db)
        decision = await authorize(db, "alice")
        assert (decision.allowed, decision.credits_remaining_nano_usd) == (True, SEAT - ESTIMATE)
        assert await grant_keys(db, "alice") == [f"grant:alice:{previous_period(PERIOD)}", f"grant:alice:{PERIOD}"]
        assert (await row_of(db, "alice")).credits_granted_ahead is False
        await assert_verified(db)

    async def test_a_plan_lowered_before_the_start_gets_the_lower_credits(self, db: Database) -> None:
        await seed(db)
        await grant_ahead(db)
        await set_seats(db, "acme", 1)
        decision = await authorize(db, "alice", bill_to="acme")
        assert (decision.allowed, decision.credits_remaining_nano_usd) == (True, SEAT - ESTIMATE)
        assert (await grant_keys(db, "acme"))[-2:] == [
            f"grant:acme:{PERIOD}",
            f"grant:acme:{PERIOD}:at-start:to:{SEAT}",
        ]
        row = await row_of(db, "acme")
        assert (row.credits_granted_nano_usd, row.granted_seats, row.credits_granted_ahead) == (SEAT, 1, False)
        async with db.session_scope() as session:
            assert await entries_sum(session, codes.credits("acme", PERIOD)) == -SEAT
        await assert_verified(db)

    async def test_a_plan_raised_after_the_last_run_is_topped_up(self, db: Database) -> None:
        await seed(db)
        await grant_ahead(db)
        await set_seats(db, "acme", 4)
        decision = await authorize(db, "bob", bill_to="acme")
        assert decision.credits_remaining_nano_usd == 4 * SEAT - ESTIMATE
        assert (await grant_keys(db, "acme"))[-1] == f"grant:acme:{PERIOD}:at-start:to:{4 * SEAT}"
        await assert_verified(db)

    async def test_the_jobs_first_run_in_the_period_sets_every_grant_to_its_plan(self, db: Database) -> None:
        await seed(db)
        await grant_ahead(db)
        await set_seats(db, "acme", 1)
        with clock_at(period_bounds(PERIOD)[0] + timedelta(minutes=5)):
            summary = await run_once(db)
        assert summary == f"grant-credits {PERIOD}: 4 account(s) checked, -$2.000000000 granted now"
        for name in ("alice", "bob", "acme", "solo-org"):
            assert (await row_of(db, name)).credits_granted_ahead is False
        assert (await row_of(db, "acme")).credits_granted_nano_usd == SEAT
        await assert_verified(db)

    async def test_once_set_a_lowered_plan_claws_nothing_back(self, db: Database) -> None:
        await seed(db)
        await grant_ahead(db)
        await authorize(db, "alice", bill_to="acme")  # sets acme's grant to its plan: 2 seats
        await set_seats(db, "acme", 1)
        decision = await authorize(db, "alice", bill_to="acme")
        assert decision.credits_remaining_nano_usd == 2 * SEAT - 2 * ESTIMATE
        assert (await grant_keys(db, "acme"))[-1] == f"grant:acme:{PERIOD}"
        await assert_verified(db)

    async def test_a_refusal_leaves_the_grant_to_be_set_later(self, db: Database) -> None:
        await seed(db)
        await grant_ahead(db)
        async with db.session_scope() as session:
            (await session.get(Account, "alice")).status = "delinquent"
        assert (await authorize(db, "alice")).reason == "account_delinquent"
        assert (await row_of(db, "alice")).credits_granted_ahead is True

    async def test_a_posting_sets_the_grant_too(self, db: Database) -> None:
        """Ingest and settling lock rows through ``lock_account_periods``: a lowered plan is set there as well."""
        await seed(db)
        await grant_ahead(db)
        await set_seats(db, "acme", 1)
        async with db.session_scope() as session:
            acme = await session.get(Account, "acme")
            rows = await credits_service.lock_account_periods(session, keys=[("acme", PERIOD)], accounts={"acme": acme})
            assert (rows[("acme", PERIOD)].credits_granted_nano_usd, rows[("acme", PERIOD)].credits_granted_ahead) == (
                SEAT,
                False,
            )
        await assert_verified(db)

    async def test_a_month_that_ended_before_anything_looked_keeps_its_grant(self, db: Database) -> None:
        """Its credits expired with it: nothing is topped up or taken back (SPEC §3)."""
        await seed(db)
        ended = previous_period(PERIOD)
        with clock_at(period_bounds(ended)[0] - timedelta(hours=1)):
            await run_once(db)
        await set_seats(db, "acme", 1)
        async with db.session_scope() as session:
            acme = await session.get(Account, "acme")
            await credits_service.lock_account_periods(session, keys=[("acme", ended)], accounts={"acme": acme})
        row = await row_of(db, "acme", ended)
        assert (row.credits_granted_nano_usd, row.credits_granted_ahead) == (2 * SEAT, False)
        assert (await grant_keys(db, "acme"))[-1] == f"grant:acme:{ended}"
        await assert_verified(db)


@pytest.mark.parametrize("seats", [1, 3])
async def test_both_paths_set_a_changed_plan_alike(db: Database, backend: str, seats: int) -> None:
    """The one-statement path (PostgreSQL) and the step-by-step one (SQLite) leave the same grant and figures."""
    await seed(db)
    await grant_ahead(db)
    await set_seats(db, "acme", seats)
    decision = await authorize(db, "alice", bill_to="acme")
    assert (decision.allowed, decision.credits_remaining_nano_usd) == (True, seats * SEAT - ESTIMATE)
    row = await row_of(db, "acme")
    assert (row.credits_granted_nano_usd, row.credits_granted_ahead, row.held_nano_usd) == (
        seats * SEAT,
        False,
        ESTIMATE,
    )
    await assert_verified(db)
