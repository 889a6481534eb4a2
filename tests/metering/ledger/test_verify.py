"""verify(): clean on a healthy ledger; names each breach after tampering; warns on limits passed in flight."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from metering.credits.service import credits_service
from metering.db import Database
from metering.holds.service import holds_service
from metering.ledger import codes
from metering.ledger.service import ledger_service
from metering.ledger.verify import verify
from metering.limits.service import limits_service
from metering.models import Period
from metering.periods import current_period, previous_period, utcnow
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.metering.ledger.helpers import at, minutes_ago, store_usage


async def healthy_ledger(db: Database) -> dict[str, int]:
    """A pro user, a free user over its credits, a quarantine-free mix; returns record ids by name."""
    async with db.session_scope() as session:
        await create_account(session, "alice", plan="pro")
        await create_account(session, "bob", plan="free")
        await create_provider(session, "together", default_estimate_nano_usd=500)
        a = await store_usage(session, user="alice")
        b = await store_usage(session, user="bob")
        pending = await store_usage(session, user="alice")
        await settle(session, priced=[PricedRequest(a.id, 3_000_000_000), PricedRequest(b.id, 100_000_001)])
    return {"alice": a.id, "bob": b.id, "pending": pending.id}


class TestVerify:
    async def test_healthy_ledger_is_clean(self, db: Database) -> None:
        await healthy_ledger(db)
        report = await verify(db)
        assert report.ok, [c.breaches for c in report.checks]
        assert (report.breach_count, report.warning_count) == (0, 0)

    async def test_tampered_entry_breaks_balance_and_sum(self, db: Database) -> None:
        await healthy_ledger(db)
        async with db.session_scope() as session:
            await session.execute(text("UPDATE ledger_entries SET amount_nano_usd = amount_nano_usd + 1 WHERE id = 1"))
        report = await verify(db)
        assert not report.ok
        assert report.check("balanced").breach_count == 1
        assert report.check("balances").breach_count == 1
        assert report.check("balances").breaches[0].endswith("(off by -1)")

    async def test_tampered_cached_balance(self, db: Database) -> None:
        await healthy_ledger(db)
        async with db.session_scope() as session:
            await session.execute(
                text("UPDATE ledger_accounts SET balance_nano_usd = balance_nano_usd - 5 WHERE code = :code"),
                {"code": codes.receivable("alice", current_period())},
            )
        report = await verify(db)
        assert report.check("balances").breaches == [
            f"{codes.receivable('alice', current_period())}: cached 999999995, entries sum to 1000000000 (off by -5)"
        ]

    async def test_usage_totals_that_differ_from_the_records(self, db: Database) -> None:
        await healthy_ledger(db)
        assert (await verify(db)).check("usage_rollups").ok
        async with db.session_scope() as session:
            if db.dialect == "postgresql":  # a lost difference, as if a write bypassed the triggers
                await session.execute(text("ALTER TABLE usage_records DISABLE TRIGGER usage_rollups_on_update"))
            await session.execute(
                text("UPDATE usage_records SET custom_key = true, status = 'custom_key' WHERE status = 'pending'")
            )
            if db.dialect == "postgresql":
                await session.execute(text("ALTER TABLE usage_records ENABLE TRIGGER usage_rollups_on_update"))
        check = (await verify(db)).check("usage_rollups")
        if db.dialect != "postgresql":
            assert check.ok  # SQLite keeps no totals: the series reads the records themselves
            return
        # The pending request of alice, who pays for it herself, became a custom-key one: its hour's and
        # its day's provider and model totals (her own account keeps no member totals).
        assert check.breach_count == 4
        assert any(
            line.startswith("alice hour ")
            and " provider together: records (requests, priced, cost, pending, custom key) "
            "(1, 1, 3000000000, 0, 1), totals (2, 1, 3000000000, 1, 0)"
            in line
            for line in check.breaches
        ), check.breaches

    async def test_priced_without_transaction(self, db: Database) -> None:
        ids = await healthy_ledger(db)
        async with db.session_scope() as session:
            await session.execute(
                text("UPDATE usage_records SET status = 'priced', cost_nano_usd = 1 WHERE id = :id"),
                {"id": ids["pending"]},
            )
        report = await verify(db)
        assert (
            f"usage record {ids['pending']} is priced but has no cost transaction"
            in report.check("priced_once").breaches
        )

    async def test_cost_differs_from_posting(self, db: Database) -> None:
        ids = await healthy_ledger(db)
        async with db.session_scope() as session:
            await session.execute(text("UPDATE usage_records SET cost_nano_usd = 7 WHERE id = :id"), {"id": ids["bob"]})
        report = await verify(db)
        assert report.check("priced_once").breaches == [
            f"usage record {ids['bob']} costs 7 but its transaction owes the provider 100000001"
        ]

    async def test_free_account_with_receivable(self, db: Database) -> None:
        await healthy_ledger(db)
        period = current_period()
        async with db.session_scope() as session:
            await ledger_service.post(
                session,
                kind="adjustment",
                idempotency_key="bad",
                period=period,
                entries=[(codes.receivable("bob", period), 10), (codes.write_off(period), -10)],
            )
        report = await verify(db)
        assert report.check("free_not_invoiced").breaches == [
            f"bob ({codes.receivable('bob', period)}) was charged $0.000000010 on plan 'free', which has no pay-as-you-go"
        ]

    async def test_a_cost_charged_to_a_receivable_on_a_plan_without_payg(self, db: Database) -> None:
        # Made by hand: pricing writes a free plan's overage off. alice is on pro today; the cost says free.
        await healthy_ledger(db)
        period = current_period()
        async with db.session_scope() as session:
            await ledger_service.post(
                session,
                kind=codes.REQUEST_COST,
                idempotency_key="cost-on-free",
                period=period,
                account_name="alice",
                entries=[(codes.receivable("alice", period), 25), (codes.payable("together", period), -25)],
                plan="free",
            )
        report = await verify(db)
        assert report.check("free_not_invoiced").breaches == [
            f"alice ({codes.receivable('alice', period)}) was charged $0.000000025 on plan 'free', which has no pay-as-you-go"
        ]

    async def test_period_cache_drift(self, db: Database) -> None:
        await healthy_ledger(db)
        async with db.session_scope() as session:
            await session.execute(
                text("UPDATE account_periods SET pending_estimate_nano_usd = 0 WHERE account_name = 'alice'")
            )
        report = await verify(db)
        assert report.check("period_caches").breaches == [
            f"alice {current_period()} pending_estimate_nano_usd: cached 0, sum 500"
        ]


class TestSpendingLimits:
    async def _over_limit(self, db: Database, *, second_starts_after: bool) -> None:
        async with db.session_scope() as session:
            alice = await create_account(session, "alice", plan="pro")
            alice.spending_limit_nano_usd = 1_000
            await create_provider(session, "premium", credit_eligible=False)
            first = await store_usage(session, provider="premium", started_at=minutes_ago(5))
            await settle(session, priced=[PricedRequest(first.id, 1_500)])
        async with db.session_scope() as session:
            started = utcnow() + timedelta(seconds=1) if second_starts_after else minutes_ago(4)
            second = await store_usage(session, provider="premium", started_at=started)
            await settle(session, priced=[PricedRequest(second.id, 200)])

    async def test_costs_in_flight_are_a_warning(self, db: Database) -> None:
        await self._over_limit(db, second_starts_after=False)
        report = await verify(db)
        assert report.ok
        assert report.check("spending_limits").warnings == [
            f"alice {current_period()}: pay-as-you-go $0.000001700 over its limit $0.000001000 by $0.000000700, "
            "within the estimate error of the requests in flight"
        ]

    async def test_charge_for_a_request_started_after_the_limit_is_a_breach(self, db: Database) -> None:
        await self._over_limit(db, second_starts_after=True)
        report = await verify(db)
        assert report.check("spending_limits").breaches == [
            f"alice {current_period()}: pay-as-you-go $0.000001700 over its limit $0.000001000; "
            "1 request(s) without a hold started after the limit was reached were charged $0.000000200"
        ]

    async def test_an_authorized_request_started_after_the_limit_was_reached_passes_it_by_its_estimate_error(
        self, db: Database
    ) -> None:
        """Admitted on credits (its estimate fit them) after the cap was reached: only its cost beyond
        the estimate could spill into pay-as-you-go, and that is estimate error, not a breach."""
        async with db.session_scope() as session:
            alice = await create_account(session, "alice", plan="pro")
            alice.spending_limit_nano_usd = 1_000
            await create_provider(session, "premium", credit_eligible=False)
            await create_provider(session, "together", default_estimate_nano_usd=100)
            first = await store_usage(session, provider="premium", started_at=minutes_ago(5))
            await settle(session, priced=[PricedRequest(first.id, 1_000)])
        async with db.session_scope() as session:
            row = await credits_service.lock_period(session, account=alice, period=current_period())
            row.credits_used_nano_usd = row.credits_granted_nano_usd - 100  # 100 nano-USD of credits left
            await session.execute(
                text("UPDATE ledger_accounts SET balance_nano_usd = -100 WHERE code = :c"),
                {"c": codes.credits("alice", current_period())},
            )
        async with db.session_scope() as session:
            hold_id = await holds_service.place_hold(
                session,
                account="alice",
                period=current_period(),
                user="alice",
                provider_id="together",
                model="org/model",
                amount_nano_usd=100,
                credit_eligible=True,
                now=utcnow(),
            )
            later = await store_usage(session, provider="together", started_at=utcnow(), hold_id=hold_id)
            await settle(session, priced=[PricedRequest(later.id, 400)])
        check = (await verify(db)).check("spending_limits")
        assert (check.breach_count, check.warning_count) == (0, 1)
        assert "by $0.000000300, within the estimate error" in check.warnings[0]

    async def test_limit_lowered_below_charges_is_reached_when_set(self, db: Database) -> None:
        async with db.session_scope() as session:
            await create_account(session, "alice", plan="pro")
            await create_provider(session, "premium", credit_eligible=False)
            first = await store_usage(session, provider="premium", started_at=minutes_ago(5))
            await settle(session, priced=[PricedRequest(first.id, 1_500)])
        async with db.session_scope() as session:
            # Started after the charge above, before the limit existed: authorized under no limit.
            second = await store_usage(session, provider="premium", started_at=utcnow())
        async with db.session_scope() as session:
            await limits_service.set_spending_limit(session, account_name="alice", limit_nano_usd=1_000, actor="alice")
        async with db.session_scope() as session:
            await settle(session, priced=[PricedRequest(second.id, 200)])
        report = await verify(db)
        assert report.ok, report.check("spending_limits").breaches
        assert report.check("spending_limits").warning_count == 1

    async def test_a_request_admitted_before_the_limit_was_set_may_pass_it_whole(self, db: Database) -> None:
        async with db.session_scope() as session:
            await create_account(session, "alice", plan="pro")
            await create_provider(session, "premium", credit_eligible=False)
            hold_id = await holds_service.place_hold(
                session,
                account="alice",
                period=current_period(),
                user="alice",
                provider_id="premium",
                model="org/model",
                amount_nano_usd=5_000,
                credit_eligible=False,
                now=utcnow(),
            )
        async with db.session_scope() as session:
            await limits_service.set_spending_limit(session, account_name="alice", limit_nano_usd=1_000, actor="alice")
        async with db.session_scope() as session:
            usage = await store_usage(session, provider="premium", started_at=minutes_ago(1), hold_id=hold_id)
            await settle(session, priced=[PricedRequest(usage.id, 5_000)])
        report = await verify(db)
        assert report.ok, report.check("spending_limits").breaches
        assert report.check("spending_limits").warnings == [
            f"alice {current_period()}: pay-as-you-go $0.000005000 over its limit $0.000001000 by $0.000004000, "
            "within the estimate error of the requests in flight"
        ]

    async def test_late_cost_is_listed(self, db: Database) -> None:
        old = previous_period(current_period())
        async with db.session_scope() as session:
            alice = await create_account(session, "alice", plan="pro")
            alice.spending_limit_nano_usd = 100
            await create_provider(session, "premium", credit_eligible=False)
            usage = await store_usage(session, provider="premium", started_at=at(f"{old}-28T10:00:00Z"))
            session.add(Period(period=old, status="closed"))
            await session.flush()
            await settle(session, priced=[PricedRequest(usage.id, 300)])
        report = await verify(db)
        assert report.ok
        assert report.check("spending_limits").warnings == [
            f"alice {current_period()}: late cost of {old} charged $0.000000300",
            f"alice {current_period()}: pay-as-you-go $0.000000300 over its limit $0.000000100 by $0.000000200, "
            "within the estimate error of the requests in flight",
        ]
