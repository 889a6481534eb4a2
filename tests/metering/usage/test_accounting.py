"""account_for_new_usage and settle: estimates, compute-time pricing, exactly-once settling, the split."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from metering.credits.service import credits_service
from metering.db import Database
from metering.holds.service import holds_service
from metering.ledger import codes
from metering.ledger.verify import verify_session
from metering.models import Period
from metering.periods import current_period, previous_period, utcnow
from metering.usage.accounting import account_for_new_usage, settle
from metering.usage.types import PricedRequest, QuarantinedRequest
from tests.factories.accounts import add_member, create_account
from tests.factories.providers import create_provider
from tests.metering.ledger.helpers import at, balance, period_row, record, store_usage, transactions

FREE = 100_000_000
PRO = 2_000_000_000


async def place_hold(session, account, *, provider: str, amount: int) -> str:
    """A hold as authorize places it: on the account's locked period row."""
    await credits_service.lock_period(session, account=account, period=current_period())
    return await holds_service.place_hold(
        session,
        account=account.name,
        period=current_period(),
        user=account.name,
        provider_id=provider,
        model="org/model",
        amount_nano_usd=amount,
        credit_eligible=True,
        now=utcnow(),
    )


class TestAccountForNewUsage:
    async def test_cost_endpoint_record_gets_the_default_estimate_as_pending(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=123_456)
        usage = await store_usage(session)
        assert (await record(session, usage.id)).estimate_nano_usd == 123_456
        row = await period_row(session, "alice", usage.period)
        assert row.pending_estimate_nano_usd == 123_456
        assert row.credits_granted_nano_usd == PRO

    async def test_held_hold_becomes_the_pending_estimate(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=123_456)
        hold_id = await place_hold(session, alice, provider="together", amount=5_000)
        usage = await store_usage(session, hold_id=hold_id)
        assert (await record(session, usage.id)).estimate_nano_usd == 5_000
        row = await period_row(session, "alice", current_period())
        assert (row.held_nano_usd, row.pending_estimate_nano_usd) == (0, 5_000)
        assert (await verify_session(session)).ok

    async def test_hold_already_attached_falls_back_to_the_estimator(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=123_456)
        hold_id = await place_hold(session, alice, provider="together", amount=5_000)
        await store_usage(session, hold_id=hold_id)
        second = await store_usage(session, hold_id=hold_id)
        assert (await record(session, second.id)).estimate_nano_usd == 123_456
        row = await period_row(session, "alice", current_period())
        assert (row.held_nano_usd, row.pending_estimate_nano_usd) == (0, 128_456)
        assert (await verify_session(session)).ok

    async def test_two_records_naming_one_hold_in_a_batch_attach_it_once(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=100)
        hold_id = await place_hold(session, alice, provider="together", amount=5_000)
        first = await store_usage(session, hold_id=hold_id, account=False)
        second = await store_usage(session, hold_id=hold_id, account=False)
        await account_for_new_usage(session, [first, second])
        assert (await record(session, first.id)).estimate_nano_usd == 5_000
        assert (await record(session, second.id)).estimate_nano_usd == 100
        assert (await period_row(session, "alice", current_period())).pending_estimate_nano_usd == 5_100
        assert (await verify_session(session)).ok

    async def test_compute_time_with_a_hold_settles_it_at_once(self, session) -> None:
        alice = await create_account(session, "alice", plan="pro")
        await create_provider(session, "hf-inference", pricing="compute_time")
        hold_id = await place_hold(session, alice, provider="hf-inference", amount=9_999)
        await store_usage(session, provider="hf-inference", duration_ms=10_000, hardware="cpu-basic", hold_id=hold_id)
        row = await period_row(session, "alice", current_period())
        assert (row.held_nano_usd, row.pending_estimate_nano_usd, row.credits_used_nano_usd) == (0, 0, 1_200_000)
        assert (await verify_session(session)).ok

    async def test_custom_key_record_is_never_estimated(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=123_456)
        usage = await store_usage(session, custom_key=True)
        assert (await record(session, usage.id)).estimate_nano_usd == 0
        assert await transactions(session) == []

    async def test_compute_time_is_priced_at_record_time(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "hf-inference", pricing="compute_time")
        usage = await store_usage(session, provider="hf-inference", duration_ms=10_000, hardware="cpu-basic")
        stored = await record(session, usage.id)
        assert (stored.status, stored.cost_nano_usd) == ("priced", 1_200_000)
        row = await period_row(session, "alice", usage.period)
        assert (row.credits_used_nano_usd, row.payg_nano_usd, row.pending_estimate_nano_usd) == (1_200_000, 0, 0)
        assert await balance(session, codes.payable("hf-inference", usage.period)) == -1_200_000

    async def test_compute_time_without_duration_is_quarantined(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "hf-inference", pricing="compute_time")
        usage = await store_usage(session, provider="hf-inference", hardware="cpu-basic")
        stored = await record(session, usage.id)
        assert (stored.status, stored.quarantine_reason) == ("quarantined", "compute_time: missing duration_ms")
        assert (await period_row(session, "alice", usage.period)).credits_used_nano_usd == 0

    async def test_compute_time_unknown_hardware_is_quarantined(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "hf-inference", pricing="compute_time")
        usage = await store_usage(session, provider="hf-inference", duration_ms=5, hardware="tpu-v9")
        stored = await record(session, usage.id)
        assert stored.status == "quarantined"
        assert stored.quarantine_reason == "compute_time: unknown hardware 'tpu-v9'"
        assert await transactions(session, kind=codes.REQUEST_COST) == []

    async def test_compute_time_over_the_ceiling_is_quarantined(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "hf-inference", pricing="compute_time")
        # 1,000,000 s at 120,000 nano-USD/s: 120 USD, over the default ceiling of 100 USD.
        usage = await store_usage(session, provider="hf-inference", duration_ms=1_000_000_000, hardware="cpu-basic")
        stored = await record(session, usage.id)
        assert (stored.status, stored.cost_nano_usd, stored.estimate_nano_usd) == ("quarantined", None, 0)
        assert stored.quarantine_reason == ("compute_time: 120000000000 nano-USD exceeds the ceiling of 100000000000")
        assert await transactions(session, kind=codes.REQUEST_COST) == []
        assert (await period_row(session, "alice", usage.period)).credits_used_nano_usd == 0

    async def test_month_boundary_picks_the_started_at_period(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "hf-inference", pricing="compute_time")
        before = await store_usage(
            session,
            provider="hf-inference",
            duration_ms=1_000,
            hardware="cpu-basic",
            started_at=at("2026-11-30T23:59:59.999Z"),
        )
        after = await store_usage(
            session,
            provider="hf-inference",
            duration_ms=1_000,
            hardware="cpu-basic",
            started_at=at("2026-12-01T00:00:00Z"),
        )
        assert (before.period, after.period) == ("2026-11", "2026-12")
        assert (await period_row(session, "alice", "2026-11")).credits_used_nano_usd == 120_000
        assert (await period_row(session, "alice", "2026-12")).credits_used_nano_usd == 120_000


class TestSettle:
    async def test_priced_request_consumes_credits_then_payg(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=1_000)
        first = await store_usage(session)
        second = await store_usage(session)
        result = await settle(session, priced=[PricedRequest(first.id, PRO - 500), PricedRequest(second.id, 2_000)])
        assert (result.priced, result.replayed, result.conflicts) == (2, 0, 0)
        row = await period_row(session, "alice", first.period)
        assert (row.credits_used_nano_usd, row.payg_nano_usd, row.written_off_nano_usd) == (PRO, 1_500, 0)
        assert row.pending_estimate_nano_usd == 0
        assert await balance(session, codes.receivable("alice", first.period)) == 1_500
        assert await balance(session, codes.credits("alice", first.period)) == 0
        assert await balance(session, codes.payable("together", first.period)) == -(PRO + 1_500)

    async def test_free_user_overflow_is_written_off(self, session) -> None:
        await create_account(session, "bob", plan="free")
        await create_provider(session, "together")
        usage = await store_usage(session, user="bob")
        await settle(session, priced=[PricedRequest(usage.id, FREE + 7)])
        row = await period_row(session, "bob", usage.period)
        assert (row.credits_used_nano_usd, row.payg_nano_usd, row.written_off_nano_usd) == (FREE, 0, 7)
        assert await balance(session, codes.write_off(usage.period)) == 7

    async def test_ineligible_provider_skips_credits(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "premium", credit_eligible=False)
        usage = await store_usage(session, provider="premium")
        await settle(session, priced=[PricedRequest(usage.id, 5_000)])
        row = await period_row(session, "alice", usage.period)
        assert (row.credits_used_nano_usd, row.payg_nano_usd) == (0, 5_000)

    async def test_org_credits_scale_with_seats(self, session) -> None:
        await create_account(session, "acme", plan="team", seats=3)
        await create_account(session, "alice", plan="free")
        await add_member(session, org="acme", user="alice")
        await create_provider(session, "together")
        usage = await store_usage(session, user="alice", billing_account="acme")
        await settle(session, priced=[PricedRequest(usage.id, 3 * PRO + 1)])
        row = await period_row(session, "acme", usage.period)
        assert (row.credits_granted_nano_usd, row.credits_used_nano_usd, row.payg_nano_usd) == (3 * PRO, 3 * PRO, 1)

    async def test_replay_is_a_no_op(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
        usage = await store_usage(session)
        await settle(session, priced=[PricedRequest(usage.id, 42)])
        again = await settle(session, priced=[PricedRequest(usage.id, 42)])
        assert (again.priced, again.replayed, again.conflicts) == (0, 1, 0)
        assert len(await transactions(session, kind=codes.REQUEST_COST)) == 1
        assert (await period_row(session, "alice", usage.period)).credits_used_nano_usd == 42

    async def test_different_cost_for_a_priced_request_is_refused(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
        usage = await store_usage(session)
        await settle(session, priced=[PricedRequest(usage.id, 42)])
        again = await settle(session, priced=[PricedRequest(usage.id, 43)])
        assert (again.priced, again.replayed, again.conflicts) == (0, 0, 1)
        assert (await record(session, usage.id)).cost_nano_usd == 42
        assert (await period_row(session, "alice", usage.period)).credits_used_nano_usd == 42

    async def test_quarantined_and_unpriced_release_the_estimate(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=1_000)
        bad = await store_usage(session)
        lost = await store_usage(session)
        result = await settle(session, quarantined=[QuarantinedRequest(bad.id, "cost is a float")], unpriced=[lost.id])
        assert (result.quarantined, result.unpriced) == (1, 1)
        assert (await record(session, bad.id)).quarantine_reason == "cost is a float"
        assert (await record(session, lost.id)).status == "unpriced"
        row = await period_row(session, "alice", bad.period)
        assert (row.pending_estimate_nano_usd, row.credits_used_nano_usd) == (0, 0)
        # The estimate stays on the record for the drift report.
        assert (await record(session, bad.id)).estimate_nano_usd == 1_000

    async def test_late_cost_goes_to_the_open_period(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together", default_estimate_nano_usd=1_000)
        old = previous_period(current_period())
        usage = await store_usage(session, started_at=at(f"{old}-15T12:00:00Z"))
        session.add(Period(period=old, status="closed"))
        await session.flush()
        await settle(session, priced=[PricedRequest(usage.id, 9_000)])
        (late,) = await transactions(session, kind=codes.LATE_REQUEST_COST)
        assert (late.period, late.original_period) == (current_period(), old)
        assert (await period_row(session, "alice", current_period())).credits_used_nano_usd == 9_000
        closed_row = await period_row(session, "alice", old)
        assert (closed_row.credits_used_nano_usd, closed_row.pending_estimate_nano_usd) == (0, 0)


class TestSettleUnderLease:
    async def test_only_records_still_leased_by_the_caller_move(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
        ours, taken_over, missing = [await store_usage(session) for _ in range(3)]
        for usage, owner in ((ours, "worker-a"), (taken_over, "worker-b"), (missing, "worker-a")):
            (await record(session, usage.id)).lease_owner = owner
        await session.flush()
        result = await settle(
            session,
            priced=[PricedRequest(ours.id, 40), PricedRequest(taken_over.id, 50)],
            unpriced=[missing.id],
            lease_owner="worker-a",
        )
        # The record another worker leases now is neither moved nor counted as a replay of ours.
        assert (result.priced, result.unpriced, result.replayed, result.conflicts) == (1, 1, 0, 0)
        assert [(await record(session, u.id)).status for u in (ours, taken_over, missing)] == [
            "priced",
            "pending",
            "unpriced",
        ]
        assert len(await transactions(session, kind=codes.REQUEST_COST)) == 1
        assert (await period_row(session, "alice", ours.period)).credits_used_nano_usd == 40

    async def test_a_replay_under_the_same_lease_is_counted(self, session) -> None:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
        usage = await store_usage(session)
        (await record(session, usage.id)).lease_owner = "worker-a"
        await session.flush()
        await settle(session, priced=[PricedRequest(usage.id, 40)], lease_owner="worker-a")
        again = await settle(session, priced=[PricedRequest(usage.id, 41)], lease_owner="worker-a")
        assert (again.priced, again.replayed, again.conflicts) == (0, 0, 1)
        assert (await record(session, usage.id)).cost_nano_usd == 40


class TestConcurrentSettle:
    async def test_two_workers_settling_the_same_batch_price_each_request_once(self, db, settings) -> None:
        async with db.session_scope() as session:
            await create_account(session, "alice", plan="pro")
            await create_provider(session, "together", default_estimate_nano_usd=10)
            ids = [(await store_usage(session)).id for _ in range(200)]
        other = Database(settings.database_url)

        async def worker(database: Database, order: list[int]) -> tuple[int, int]:
            async with database.session_scope() as session:
                result = await settle(session, priced=[PricedRequest(i, 1_000 + i) for i in order])
            return result.priced, result.replayed

        try:
            results = await asyncio.gather(worker(db, ids), worker(other, list(reversed(ids))), worker(db, ids[50:150]))
        finally:
            await other.dispose()
        assert sum(priced for priced, _ in results) == 200
        assert sum(replayed for _, replayed in results) == 300
        async with db.session_scope() as session:
            assert len(await transactions(session, kind=codes.REQUEST_COST)) == 200
            row = await period_row(session, "alice", current_period())
            assert row.credits_used_nano_usd == sum(1_000 + i for i in ids)
            assert row.pending_estimate_nano_usd == 0
            assert (await verify_session(session)).ok


class TestSettlePlannedBeforeTheLock:
    """A batch's split is planned from totals read without a lock and checked once they are locked."""

    async def test_credits_used_meanwhile_by_another_worker_are_not_spent_twice(self, db, settings, backend) -> None:
        if backend == "sqlite":
            pytest.skip("SQLite has one writer at a time: no other worker can settle in between")
        async with db.session_scope() as session:
            await create_account(session, "alice", plan="pro")
            await create_provider(session, "together", default_estimate_nano_usd=10)
            warm_up, theirs, ours = [await store_usage(session) for _ in range(3)]
            # The first cost creates alice's ledger accounts, so the next ones plan before locking.
            await settle(session, priced=[PricedRequest(warm_up.id, 100)])
        other = Database(settings.database_url)
        try:
            async with other.session_scope() as their_session:
                # Another worker takes all but 1,000 of alice's credits and holds her row until it commits.
                await settle(their_session, priced=[PricedRequest(theirs.id, PRO - 100 - 1_000)])
                ours_settled = asyncio.create_task(_settle_alone(db, PricedRequest(ours.id, 5_000)))
                # Ours read the totals before that commit and now waits for alice's row.
                await _until_waiting_for_a_lock(db, ours_settled)
            result = await ours_settled
        finally:
            await other.dispose()
        assert result.priced == 1
        async with db.session_scope() as session:
            row = await period_row(session, "alice", ours.period)
            assert (row.credits_used_nano_usd, row.payg_nano_usd) == (PRO, 4_000)
            assert await balance(session, codes.receivable("alice", ours.period)) == 4_000
            assert await balance(session, codes.credits("alice", ours.period)) == 0
            assert len(await transactions(session, kind=codes.REQUEST_COST)) == 3
            assert (await verify_session(session)).ok


async def _settle_alone(db: Database, request: PricedRequest):
    async with db.session_scope() as session:
        return await settle(session, priced=[request])


async def _until_waiting_for_a_lock(db: Database, task: asyncio.Task) -> None:
    """Until some session of the database waits for a lock (PostgreSQL), or ``task`` is done."""
    for _ in range(500):
        if task.done():
            return
        async with db.session_scope() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no session ever waited for a lock")
