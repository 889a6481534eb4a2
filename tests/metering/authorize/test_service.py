"""The money rule of authorize (property-tested) and the decision's use of estimates and plans."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metering.authorize.catalog import provider_catalog
from metering.authorize.service import AuthorizeRequest, Figures, authorize_service, money_refusal
from metering.db import Database
from metering.holds.estimates import estimates_service
from tests.metering.authorize.helpers import PRO_CREDITS, holds, period_row, seed, set_limit

amounts = st.integers(min_value=0, max_value=10**13)
figures = st.builds(Figures, granted=amounts, used=amounts, payg=amounts, in_flight=amounts)
limits = st.none() | amounts


def after_hold(f: Figures, estimate: int) -> Figures:
    return Figures(granted=f.granted, used=f.used, payg=f.payg, in_flight=f.in_flight + estimate)


class TestMoneyRule:
    def test_examples(self) -> None:
        f = Figures(granted=1_000, used=400, payg=0, in_flight=500)
        assert f.credits_remaining == 100
        assert money_refusal(f, pays_as_you_go=False, limit=None, credit_eligible=True, estimate=100) is None
        assert (
            money_refusal(f, pays_as_you_go=False, limit=None, credit_eligible=True, estimate=101)
            == "credits_exhausted"
        )
        assert money_refusal(f, pays_as_you_go=True, limit=30, credit_eligible=True, estimate=130) is None
        assert (
            money_refusal(f, pays_as_you_go=True, limit=30, credit_eligible=True, estimate=131)
            == "spending_limit_reached"
        )
        assert (
            money_refusal(f, pays_as_you_go=True, limit=30, credit_eligible=False, estimate=31)
            == "spending_limit_reached"
        )
        assert money_refusal(f, pays_as_you_go=True, limit=None, credit_eligible=False, estimate=10**12) is None

    def test_zero_estimate_is_refused_once_exhausted(self) -> None:
        spent = Figures(granted=100, used=100, payg=0, in_flight=0)
        assert (
            money_refusal(spent, pays_as_you_go=False, limit=None, credit_eligible=True, estimate=0)
            == "credits_exhausted"
        )
        capped = Figures(granted=0, used=0, payg=50, in_flight=0)
        assert (
            money_refusal(capped, pays_as_you_go=True, limit=50, credit_eligible=True, estimate=0)
            == "spending_limit_reached"
        )
        assert money_refusal(capped, pays_as_you_go=True, limit=51, credit_eligible=True, estimate=0) is None

    @given(figures, amounts, st.booleans())
    def test_free_plan_never_goes_past_credits(self, f: Figures, estimate: int, eligible: bool) -> None:
        if money_refusal(f, pays_as_you_go=False, limit=None, credit_eligible=eligible, estimate=estimate) is None:
            assert eligible
            assert f.used + f.in_flight + estimate <= f.granted
            assert after_hold(f, estimate).payg_committed == f.payg

    @given(figures, amounts, st.booleans(), amounts)
    def test_allowed_keeps_committed_payg_within_limit(
        self, f: Figures, estimate: int, eligible: bool, limit: int
    ) -> None:
        if f.payg_committed > limit:
            return  # already over (late costs); only refusals or credit-covered requests can follow
        if money_refusal(f, pays_as_you_go=True, limit=limit, credit_eligible=eligible, estimate=estimate) is None:
            assert after_hold(f, estimate).payg_committed <= limit

    @given(figures, amounts, amounts, st.booleans(), st.booleans(), limits)
    def test_a_larger_estimate_is_never_more_welcome(
        self, f: Figures, small: int, extra: int, eligible: bool, payg: bool, limit: int | None
    ) -> None:
        kwargs = {"pays_as_you_go": payg, "limit": limit, "credit_eligible": eligible}
        if money_refusal(f, estimate=small, **kwargs) is not None:
            assert money_refusal(f, estimate=small + extra, **kwargs) is not None

    @given(st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=40), amounts, amounts)
    def test_sequence_of_holds_stays_within_credits_plus_limit(
        self, estimates: list[int], granted: int, limit: int
    ) -> None:
        f = Figures(granted=granted, used=0, payg=0, in_flight=0)
        for estimate in estimates:
            if money_refusal(f, pays_as_you_go=True, limit=limit, credit_eligible=True, estimate=estimate) is None:
                f = after_hold(f, estimate)
        assert f.in_flight <= granted + limit


class TestDecision:
    async def test_step_by_step_decision_and_hold_are_one_transaction(self, db: Database) -> None:
        """A decision rolled back leaves no hold and no held amount, on the existing-row path too."""
        provider_catalog.clear()
        await seed(db)
        request = AuthorizeRequest(user="alice", bill_to=None, provider="together", model="org/m")
        async with db.session_scope() as session:
            assert (await authorize_service.decide_step_by_step(session, request=request)).allowed
        try:
            async with db.session_scope() as session:
                assert (await authorize_service.decide_step_by_step(session, request=request)).allowed
                raise LookupError("abandon the transaction")
        except LookupError:
            pass
        assert len(await holds(db)) == 1
        assert (await period_row(db, "alice")).held_nano_usd == 100_000

    async def test_hold_uses_the_observed_estimate(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        async with db.session_scope() as session:
            await estimates_service.observe_costs(
                session, [("fireworks-ai", "org/m", 40_000), ("fireworks-ai", "org/m", 60_000)]
            )
        decision = await authorize_service.authorize(
            db, request=AuthorizeRequest(user="alice", bill_to=None, provider="fireworks-ai together", model="org/m")
        )
        assert decision.credits_remaining_nano_usd == PRO_CREDITS - 50_000
        [hold] = await holds(db)
        assert (hold.provider_id, hold.model, hold.amount_nano_usd) == ("fireworks-ai", "org/m", 50_000)

    async def test_non_eligible_provider_is_all_pay_as_you_go(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        await set_limit(db, "alice", 500_000)
        request = AuthorizeRequest(user="alice", bill_to=None, provider="paid-only", model="org/m")
        first = await authorize_service.authorize(db, request=request)
        second = await authorize_service.authorize(db, request=request)
        # Credits (2 USD) remain but can never pay this provider: its estimate counts toward the limit in full.
        assert (first.allowed, first.spending_limit_remaining_nano_usd) == (True, 200_000)
        assert (first.credits_remaining_nano_usd, second.credits_remaining_nano_usd) == (PRO_CREDITS, PRO_CREDITS)
        assert (second.allowed, second.reason, second.spending_limit_remaining_nano_usd) == (
            False,
            "spending_limit_reached",
            200_000,
        )
