"""credits_service: the period row, locked, with its credits granted exactly once (and topped up)."""

from __future__ import annotations

import asyncio

from metering.accounts.service import AccountSync, account_service
from metering.balances.repository import PendingDelta
from metering.credits.service import credits_service
from metering.db import Database
from metering.ledger import codes
from metering.models import Account, Period
from metering.periods import current_period, previous_period
from tests.factories.accounts import create_account
from tests.metering.ledger.helpers import balance, transactions

PERIOD = current_period()  # an open month: an ended one is never topped up
SEAT = 2_000_000_000


class TestLockPeriod:
    async def test_first_use_grants_the_plan_credits(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        row = await credits_service.lock_period(session, account=alice, period=PERIOD)
        assert (row.credits_granted_nano_usd, row.granted_seats) == (SEAT, 1)
        assert await balance(session, codes.credits("alice", PERIOD)) == -SEAT
        assert await balance(session, codes.credits_expense(PERIOD)) == SEAT
        (grant,) = await transactions(session, kind=codes.GRANT)
        assert grant.idempotency_key == f"grant:alice:{PERIOD}"

    async def test_second_lock_grants_nothing_more(self, session) -> None:
        bob = await create_account(session, "bob", plan="free")
        await credits_service.lock_period(session, account=bob, period=PERIOD)
        row = await credits_service.lock_period(session, account=bob, period=PERIOD)
        assert row.credits_granted_nano_usd == 100_000_000
        assert len(await transactions(session, kind=codes.GRANT)) == 1

    async def test_seat_increase_tops_up_the_difference(self, session) -> None:
        acme = await create_account(session, "acme", plan="team", seats=2)
        await credits_service.lock_period(session, account=acme, period=PERIOD)
        acme, _ = await account_service.upsert_account(
            session, name="acme", sync=AccountSync(kind="org", plan="team", seats=5)
        )
        row = await credits_service.lock_period(session, account=acme, period=PERIOD)
        assert (row.credits_granted_nano_usd, row.granted_seats) == (5 * SEAT, 5)
        keys = [t.idempotency_key for t in await transactions(session, kind=codes.GRANT)]
        assert keys == [f"grant:acme:{PERIOD}", f"grant:acme:{PERIOD}:to:{5 * SEAT}"]
        assert await balance(session, codes.credits("acme", PERIOD)) == -5 * SEAT

    async def test_seat_decrease_claws_nothing_back(self, session) -> None:
        acme = await create_account(session, "acme", plan="team", seats=4)
        await credits_service.lock_period(session, account=acme, period=PERIOD)
        acme, _ = await account_service.upsert_account(
            session, name="acme", sync=AccountSync(kind="org", plan="team", seats=1)
        )
        row = await credits_service.lock_period(session, account=acme, period=PERIOD)
        assert (row.credits_granted_nano_usd, row.granted_seats) == (4 * SEAT, 4)
        assert len(await transactions(session, kind=codes.GRANT)) == 1

    async def test_closed_period_is_never_granted(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        session.add(Period(period=PERIOD, status="closed"))
        await session.flush()
        row = await credits_service.lock_period(session, account=alice, period=PERIOD)
        assert row.credits_granted_nano_usd == 0
        assert await transactions(session) == []

    async def test_lock_periods_returns_every_account(self, session) -> None:
        accounts = [await create_account(session, f"user{i}", plan="free") for i in range(5)]
        rows = await credits_service.lock_periods(session, accounts=accounts, period=PERIOD)
        assert sorted(rows) == [f"user{i}" for i in range(5)]
        assert await balance(session, codes.credits_expense(PERIOD)) == 5 * 100_000_000


class TestConcurrentGrants:
    async def test_racing_transactions_grant_once(self, db: Database, settings) -> None:
        async with db.session_scope() as session:
            await create_account(session, "acme", plan="team", seats=3)
        other = Database(settings.database_url)

        async def grant(database: Database) -> None:
            async with database.session_scope() as session:
                acme = await session.get(Account, "acme")
                await credits_service.lock_period(session, account=acme, period=PERIOD)

        try:
            await asyncio.gather(*(grant(d) for d in (db, other, db, other)))
        finally:
            await other.dispose()
        async with db.session_scope() as session:
            assert len(await transactions(session, kind=codes.GRANT)) == 1
            assert await balance(session, codes.credits("acme", PERIOD)) == -3 * SEAT


class TestAddPendingEstimates:
    """Ingest's path: one UPDATE for rows already granted; the lock-and-grant path for the rest."""

    async def test_adds_to_a_granted_row_without_granting_again(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        await credits_service.lock_period(session, account=alice, period=PERIOD)
        await credits_service.add_pending_estimates(
            session, deltas={("alice", PERIOD): PendingDelta(700)}, accounts={"alice": alice}
        )
        await credits_service.add_pending_estimates(
            session, deltas={("alice", PERIOD): PendingDelta(50)}, accounts={"alice": alice}
        )
        row = await credits_service.lock_period(session, account=alice, period=PERIOD)
        assert (row.pending_estimate_nano_usd, row.credits_granted_nano_usd) == (750, SEAT)
        assert len(await transactions(session, kind=codes.GRANT)) == 1

    async def test_a_missing_row_is_created_and_granted_even_for_a_zero_delta(self, session) -> None:
        accounts = {name: await create_account(session, name, plan="pro") for name in ("alice", "bob")}
        await credits_service.add_pending_estimates(
            session, deltas={("alice", PERIOD): PendingDelta(0), ("bob", PERIOD): PendingDelta(300)}, accounts=accounts
        )
        rows = await credits_service.lock_periods(session, accounts=list(accounts.values()), period=PERIOD)
        assert {name: (r.pending_estimate_nano_usd, r.credits_granted_nano_usd) for name, r in rows.items()} == {
            "alice": (0, SEAT),
            "bob": (300, SEAT),
        }
        assert [t.idempotency_key for t in await transactions(session, kind=codes.GRANT)] == [
            f"grant:alice:{PERIOD}",
            f"grant:bob:{PERIOD}",
        ]

    async def test_a_seat_increase_is_topped_up_before_the_estimate_is_added(self, session) -> None:
        acme = await create_account(session, "acme", plan="team", seats=2)
        await credits_service.lock_period(session, account=acme, period=PERIOD)
        acme, _ = await account_service.upsert_account(
            session, name="acme", sync=AccountSync(kind="org", plan="team", seats=3)
        )
        await credits_service.add_pending_estimates(
            session, deltas={("acme", PERIOD): PendingDelta(900)}, accounts={"acme": acme}
        )
        row = await credits_service.lock_period(session, account=acme, period=PERIOD)
        assert (row.pending_estimate_nano_usd, row.credits_granted_nano_usd, row.granted_seats) == (900, 3 * SEAT, 3)
        assert await balance(session, codes.credits("acme", PERIOD)) == -3 * SEAT

    async def test_a_closed_period_gets_the_estimate_and_no_grant(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        session.add(Period(period=PERIOD, status="closed"))
        await session.flush()
        await credits_service.add_pending_estimates(
            session, deltas={("alice", PERIOD): PendingDelta(400)}, accounts={"alice": alice}
        )
        row = await credits_service.lock_period(session, account=alice, period=PERIOD)
        assert (row.pending_estimate_nano_usd, row.credits_granted_nano_usd) == (400, 0)
        assert await transactions(session) == []

    async def test_the_payg_only_part_is_added_beside_the_total(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        await credits_service.lock_period(session, account=alice, period=PERIOD)
        delta = PendingDelta()
        delta.add(300, payg_only=True)
        delta.add(200, payg_only=False)
        await credits_service.add_pending_estimates(
            session, deltas={("alice", PERIOD): delta}, accounts={"alice": alice}
        )
        await credits_service.add_pending_estimates(
            session, deltas={("bob", PERIOD): delta}, accounts={"bob": await create_account(session, "bob", plan="pro")}
        )
        for name in ("alice", "bob"):
            row = await credits_service.lock_period(session, account=await session.get(Account, name), period=PERIOD)
            assert (row.pending_estimate_nano_usd, row.pending_payg_only_nano_usd) == (500, 300)

    async def test_an_ended_month_keeps_the_credits_it_was_granted(self, session) -> None:
        """A late record of last month after a seat increase: its credits expired with it (SPEC §3)."""
        ended = previous_period(PERIOD)
        acme = await create_account(session, "acme", plan="team", seats=2)
        await credits_service.lock_period(session, account=acme, period=ended)
        acme, _ = await account_service.upsert_account(
            session, name="acme", sync=AccountSync(kind="org", plan="team", seats=3)
        )
        await credits_service.add_pending_estimates(
            session, deltas={("acme", ended): PendingDelta(900)}, accounts={"acme": acme}
        )
        row = await credits_service.lock_period(session, account=acme, period=ended)
        assert (row.pending_estimate_nano_usd, row.credits_granted_nano_usd) == (900, 2 * SEAT)
        assert (
            await credits_service.lock_period(session, account=acme, period=PERIOD)
        ).credits_granted_nano_usd == 3 * SEAT

    async def test_an_orm_copy_held_by_the_session_reloads_the_new_total(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        held = await credits_service.lock_period(session, account=alice, period=PERIOD)
        await credits_service.add_pending_estimates(
            session, deltas={("alice", PERIOD): PendingDelta(123)}, accounts={"alice": alice}
        )
        # Read as the ORM would on next access: a stale copy would still say 0.
        assert await session.run_sync(lambda _: held.pending_estimate_nano_usd) == 123
