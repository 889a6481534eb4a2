"""Credit grants: spent after the plan's credits and before pay-as-you-go, soonest expiry first, expired with
a posting; authorize counts them on both of its paths."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from metering.authorize.service import AuthorizeRequest, authorize_service, statement_arguments
from metering.credit_grants.errors import InvalidCreditGrant
from metering.credit_grants.service import credit_grant_service
from metering.db import Database
from metering.hot_path.pg_decision import pg_decision_repository
from metering.ledger import codes
from metering.ledger.verify import verify
from metering.limits.service import limits_service
from metering.models import AccountPeriod, LedgerAccount
from metering.periods import current_period, next_period, period_bounds, previous_period, utcnow
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest
from tests.factories.usage import create_pending_usage
from tests.metering.alerts.conftest import stored_events
from tests.metering.authorize.helpers import seed

USD = 1_000_000_000
PRO_CREDITS = 2 * USD
FREE_CREDITS = USD // 10


async def grant(db: Database, account: str, amount: int, *, expires: str | None = None) -> int:
    async with db.session_scope() as session:
        made = await credit_grant_service.grant(
            session,
            account_name=account,
            amount_nano_usd=amount,
            reason="goodwill",
            expires_period=expires,
            actor="fin",
        )
    return made.id


async def post_costs(
    db: Database, account: str, costs: list[int], *, provider: str = "together", tag: str = "r"
) -> None:
    """One pending record per cost for ``account`` (its own user), then priced in one batch."""
    async with db.session_scope() as session:
        ids = await create_pending_usage(
            session, provider_id=provider, request_ids=[f"{tag}{i}" for i in range(len(costs))], user=account
        )
    async with db.session_scope() as session:
        await settle(session, priced=[PricedRequest(ids[f"{tag}{i}"], cost) for i, cost in enumerate(costs)])


async def remaining(db: Database, account: str) -> dict[int, int]:
    async with db.session_scope() as session:
        return {
            g.id: g.remaining_nano_usd for g in await credit_grant_service.list_grants(session, account_name=account)
        }


async def period_row(db: Database, account: str) -> AccountPeriod:
    async with db.session_scope() as session:
        row = await session.get(AccountPeriod, (account, current_period()))
        assert row is not None
        return row


async def assert_verified(db: Database) -> None:
    report = await verify(db)
    assert report.ok, [line for check in report.checks for line in check.breaches]


class TestSpending:
    async def test_grants_pay_after_plan_credits_and_before_pay_as_you_go(self, db: Database) -> None:
        await seed(db)
        first = await grant(db, "alice", USD)

        # 2 USD of plan credits, then 1 USD of grant, then 0.5 USD pay-as-you-go.
        await post_costs(db, "alice", [USD, USD, USD // 2, USD // 2, USD // 2])

        row = await period_row(db, "alice")
        assert (row.credits_used_nano_usd, row.payg_nano_usd, row.written_off_nano_usd) == (PRO_CREDITS, USD // 2, 0)
        assert await remaining(db, "alice") == {first: 0}
        await assert_verified(db)

    async def test_soonest_expiry_first_and_never_expiring_last(self, db: Database) -> None:
        await seed(db)
        period = current_period()
        forever = await grant(db, "alice", USD)
        later = await grant(db, "alice", USD, expires=next_period(next_period(period)))
        sooner = await grant(db, "alice", USD, expires=period)

        await post_costs(db, "alice", [PRO_CREDITS, USD, USD // 4, USD // 2])

        assert await remaining(db, "alice") == {forever: USD, later: USD // 4, sooner: 0}
        row = await period_row(db, "alice")
        assert row.payg_nano_usd == 0
        await assert_verified(db)

    async def test_a_grant_pays_for_a_provider_plan_credits_cannot(self, db: Database) -> None:
        await seed(db)
        made = await grant(db, "alice", USD)

        await post_costs(db, "alice", [300_000], provider="paid-only")

        row = await period_row(db, "alice")
        assert (row.credits_used_nano_usd, row.payg_nano_usd) == (0, 0)
        assert await remaining(db, "alice") == {made: USD - 300_000}
        await assert_verified(db)

    async def test_a_free_user_past_both_is_written_off_as_before(self, db: Database) -> None:
        await seed(db)
        made = await grant(db, "bob", USD // 10)

        await post_costs(db, "bob", [FREE_CREDITS, USD // 10, 7])

        row = await period_row(db, "bob")
        assert (row.credits_used_nano_usd, row.payg_nano_usd, row.written_off_nano_usd) == (FREE_CREDITS, 0, 7)
        assert await remaining(db, "bob") == {made: 0}
        await assert_verified(db)


class TestExpiry:
    async def test_what_is_left_expires_with_a_posting_once(self, db: Database) -> None:
        await seed(db)
        period = current_period()
        made = await grant(db, "alice", USD, expires=period)
        await post_costs(db, "alice", [PRO_CREDITS, USD // 4])
        after_the_period = period_bounds(period)[1] + timedelta(hours=1)

        async with db.session_scope() as session:
            expired = await credit_grant_service.expire(session, now=after_the_period)
        async with db.session_scope() as session:
            again = await credit_grant_service.expire(session, now=after_the_period)

        assert (expired, again) == (USD * 3 // 4, 0)
        assert await remaining(db, "alice") == {made: 0}
        async with db.session_scope() as session:
            balance = await session.scalar(
                select(LedgerAccount.balance_nano_usd).where(
                    LedgerAccount.code == f"{codes.EXPIRED_CREDITS}:{next_period(period)}"
                )
            )
        assert balance == -(USD * 3 // 4)
        await assert_verified(db)

    async def test_nothing_expires_before_its_last_period_ends(self, db: Database) -> None:
        await seed(db)
        made = await grant(db, "alice", USD, expires=current_period())
        async with db.session_scope() as session:
            assert await credit_grant_service.expire(session, now=utcnow()) == 0
        assert await remaining(db, "alice") == {made: USD}


class TestValidation:
    @pytest.mark.parametrize(
        ("amount", "expires"),
        [(0, None), (-5, None), (True, None), (10**16, None), (5, "2020-01"), (5, "2026-13"), (5, "soon")],
    )
    async def test_refused(self, db: Database, amount: object, expires: str | None) -> None:
        await seed(db)
        with pytest.raises(InvalidCreditGrant):
            async with db.session_scope() as session:
                await credit_grant_service.grant(
                    session, account_name="alice", amount_nano_usd=amount, reason="x", expires_period=expires, actor="f"
                )

    async def test_a_past_period_is_refused_as_already_ended(self, db: Database) -> None:
        await seed(db)
        with pytest.raises(InvalidCreditGrant, match="already ended"):
            async with db.session_scope() as session:
                await credit_grant_service.grant(
                    session,
                    account_name="alice",
                    amount_nano_usd=5,
                    reason="x",
                    expires_period=previous_period(current_period()),
                    actor="f",
                )


def request(user: str, provider: str = "together") -> AuthorizeRequest:
    return AuthorizeRequest(user=user, bill_to=None, provider=provider, model="org/m")


class TestAuthorize:
    async def test_a_free_user_with_a_grant_goes_past_its_plan_credits_then_is_refused(self, db: Database) -> None:
        await seed(db)
        await post_costs(db, "bob", [FREE_CREDITS])  # plan credits used up
        refused = await authorize_service.authorize(db, request=request("bob"))
        assert (refused.allowed, refused.reason) == (False, "credits_exhausted")
        await grant(db, "bob", 250_000)

        decisions = [await authorize_service.authorize(db, request=request("bob")) for _ in range(3)]

        # Estimates of 100,000: two fit the grant, the third does not.
        assert [d.allowed for d in decisions] == [True, True, False]
        assert decisions[0].credits_remaining_nano_usd == 150_000
        assert decisions[2].reason == "credits_exhausted"
        await assert_verified(db)

    async def test_a_free_user_with_a_grant_may_use_a_provider_plan_credits_cannot_pay(self, db: Database) -> None:
        await seed(db)
        await grant(db, "bob", USD)

        decision = await authorize_service.authorize(db, request=request("bob", "paid-only"))

        assert (decision.allowed, decision.providers) == (True, ["paid-only"])

    async def test_a_grant_keeps_a_pro_user_under_its_limit(self, db: Database) -> None:
        # Limit 0: no pay-as-you-go at all; plan credits used up; a grant still pays.
        await seed(db)
        await post_costs(db, "alice", [PRO_CREDITS])
        async with db.session_scope() as session:
            await limits_service.set_spending_limit(session, account_name="alice", limit_nano_usd=0, actor="alice")
        assert (await authorize_service.authorize(db, request=request("alice"))).reason == "spending_limit_reached"
        await grant(db, "alice", 100_000)

        allowed = await authorize_service.authorize(db, request=request("alice"))
        refused = await authorize_service.authorize(db, request=request("alice"))

        assert (allowed.allowed, allowed.spending_limit_remaining_nano_usd) == (True, 0)
        assert (refused.allowed, refused.reason) == (False, "spending_limit_reached")

    async def test_the_one_statement_decision_leaves_a_payer_with_grants_to_the_step_by_step_path(
        self, db: Database, backend: str
    ) -> None:
        if backend != "postgres":
            pytest.skip("the one-statement decision is PostgreSQL's")
        await seed(db)
        await authorize_service.authorize(db, request=request("alice"))  # the period row exists
        before = await pg_decision_repository.decide(db.engine, **statement_arguments(request("alice"), utcnow()))
        await grant(db, "alice", USD)

        after = await pg_decision_repository.decide(db.engine, **statement_arguments(request("alice"), utcnow()))

        assert (before.outcome, after.outcome, after.hold_id) == ("allowed", "extra_credit", None)


class TestAlerts:
    async def test_in_flight_a_grant_covers_commits_nothing_toward_the_limit(self, db: Database) -> None:
        # Plan credits used up, a grant of 1 USD, a limit of 0.00025 USD: three holds of 0.0001 USD are the
        # grant's, so neither the decisions nor a posting meanwhile reach 80 % of the limit.
        await seed(db)
        await post_costs(db, "alice", [PRO_CREDITS])
        async with db.session_scope() as session:
            await limits_service.set_spending_limit(
                session, account_name="alice", limit_nano_usd=250_000, actor="alice"
            )
        await grant(db, "alice", USD)

        decisions = [await authorize_service.authorize(db, request=request("alice")) for _ in range(3)]
        await post_costs(db, "alice", [5], tag="later")

        assert all(d.allowed for d in decisions)
        assert await stored_events(db, "spending_limit.threshold", "spending_limit.reached") == []
        await assert_verified(db)
