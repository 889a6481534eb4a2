"""split_costs and CostSplit.holds_for: the split of a batch, and when other totals split it the same way."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.balances.repository import PeriodTotals
from metering.charging.split import split_costs
from metering.ledger import codes
from metering.usage.accounting_repository import SettledRow

PERIOD = "2026-11"
ACCOUNTS = ("acme", "alice", "bob")
PROVIDERS = {"together": True, "premium": False}  # credit-eligible or not
PLANS = {"acme": "team", "alice": "pro", "bob": "free"}
PAYG_PLANS = {"team", "pro"}


def totals(available: dict[str, int], *, used: int = 5) -> dict[tuple[str, str], PeriodTotals]:
    """Rows whose credits left are ``available`` (some already used, as in a running period)."""
    return {
        (account, PERIOD): PeriodTotals(account, PERIOD, 1, left + used, used, 0, 0, 0, 0, 0, 0)
        for account, left in available.items()
    }


def split(rows: list[SettledRow], costs: dict[int, int], state: dict[tuple[str, str], PeriodTotals]):
    return split_costs(
        rows,
        costs,
        state,
        eligible=PROVIDERS,
        plans=PLANS,
        payg_plans=PAYG_PLANS,
        posting_period=lambda row: row.period,
    )


requests = st.lists(
    st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(sorted(PROVIDERS)), st.integers(0, 10_000)),
    min_size=1,
    max_size=30,
)
credits_left = st.fixed_dictionaries({account: st.integers(0, 60_000) for account in ACCOUNTS})


def batch(drawn: list[tuple[str, str, int]]) -> tuple[list[SettledRow], dict[int, int]]:
    rows = [
        SettledRow(i, account, provider, "org/model", PERIOD, 0) for i, (account, provider, _) in enumerate(drawn, 1)
    ]
    return rows, {i: cost for i, (_, _, cost) in enumerate(drawn, 1)}


class TestSplitCosts:
    @settings(max_examples=300, deadline=None)
    @given(drawn=requests, left=credits_left)
    def test_credits_first_in_request_order_then_payg_or_written_off(self, drawn, left) -> None:
        rows, costs = batch(drawn)
        result = split(rows, costs, totals(left))
        remaining = dict(left)
        for row, posting in zip(rows, result.postings, strict=True):
            cost = costs[row.id]
            from_credits = min(cost, remaining[row.billing_account]) if PROVIDERS[row.provider_id] else 0
            remaining[row.billing_account] -= from_credits
            rest = cost - from_credits
            payg = rest if PLANS[row.billing_account] in PAYG_PLANS else 0
            assert posting.idempotency_key == f"cost:{row.id}"
            assert posting.plan == PLANS[row.billing_account]
            assert dict(posting.entries) == {
                codes.credits(row.billing_account, PERIOD): from_credits,
                codes.receivable(row.billing_account, PERIOD): payg,
                codes.write_off(PERIOD): rest - payg,
                codes.payable(row.provider_id, PERIOD): -cost,
            }
            assert sum(amount for _, amount in posting.entries) == 0
        for account in {row.billing_account for row in rows}:
            share = result.shares[(account, PERIOD)]
            assert share.from_credits_nano_usd == left[account] - remaining[account]

    def test_a_key_without_totals_has_no_credits(self) -> None:
        rows, costs = batch([("alice", "together", 700)])
        (posting,) = split(rows, costs, {}).postings
        assert dict(posting.entries)[codes.receivable("alice", PERIOD)] == 700

    def test_apply_to_adds_what_the_batch_took(self) -> None:
        rows, costs = batch([("bob", "together", 700), ("bob", "premium", 50), ("alice", "together", 30)])
        state = totals({"alice": 1_000, "bob": 500})
        split(rows, costs, state).apply_to(state)
        bob, alice = state[("bob", PERIOD)], state[("alice", PERIOD)]
        assert (bob.credits_used_nano_usd, bob.payg_nano_usd, bob.written_off_nano_usd) == (505, 0, 250)
        assert (alice.credits_used_nano_usd, alice.payg_nano_usd, alice.written_off_nano_usd) == (35, 0, 0)


class TestHoldsFor:
    @settings(max_examples=300, deadline=None)
    @given(drawn=requests, planned=credits_left, locked=credits_left)
    def test_true_exactly_when_the_locked_totals_split_the_batch_the_same_way(self, drawn, planned, locked) -> None:
        rows, costs = batch(drawn)
        plan = split(rows, costs, totals(planned))
        # Other used and granted amounts, the same credits left: only what is left matters.
        locked_totals = totals(locked, used=999)
        same = [p.entries for p in plan.postings] == [p.entries for p in split(rows, costs, locked_totals).postings]
        assert plan.holds_for(locked_totals) == same

    def test_enough_credits_either_way_holds(self) -> None:
        rows, costs = batch([("alice", "together", 700)])
        assert split(rows, costs, totals({"alice": 10_000})).holds_for(totals({"alice": 700}))
        assert not split(rows, costs, totals({"alice": 10_000})).holds_for(totals({"alice": 699}))

    def test_an_ineligible_batch_holds_whatever_the_credits(self) -> None:
        rows, costs = batch([("alice", "premium", 700)])
        assert split(rows, costs, totals({"alice": 10_000})).holds_for(totals({"alice": 0}))
