"""How a batch of priced requests splits into credits, pay-as-you-go and write-offs, as postings.

Pure: the split is computed from the account-period totals it is given, so settling can plan
a batch from totals read without a lock, write the postings, and only then lock the totals,
keeping the postings when the locked totals split the batch the same way (``holds_for``).
The postings, the heavy part of a batch, are then written while other workers hold the
same accounts' locks, instead of one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from metering.balances.repository import PeriodTotals
from metering.ledger import codes
from metering.ledger.service import Posting
from metering.usage.accounting_repository import SettledRow

Key = tuple[str, str]  # (billing account, period posted to)


@dataclass(slots=True)
class KeyShare:
    """One (account, period)'s part of a batch: the credits it had when planned, and what it took."""

    available: int
    # Sum of the costs of the batch's credit-eligible requests: how much of ``available`` it could use.
    eligible_nano_usd: int = 0
    from_credits_nano_usd: int = 0
    payg_nano_usd: int = 0
    written_off_nano_usd: int = 0


@dataclass(slots=True)
class SpendableCredit:
    """What is left of one grant or prepaid credit (``metering.credit_grants``), as the split spends it."""

    grant_id: int
    code: str  # its ledger account
    expires_period: str | None  # the last period it pays for; None: never expires
    remaining_nano_usd: int

    def pays_for(self, period: str) -> bool:
        return self.remaining_nano_usd > 0 and (self.expires_period is None or period <= self.expires_period)


@dataclass(slots=True)
class CostSplit:
    postings: list[Posting]
    shares: dict[Key, KeyShare] = field(default_factory=dict)
    # Per grant id: what the batch took from it, and its account.
    taken_from_grants: dict[int, int] = field(default_factory=dict)
    grant_accounts: dict[int, str] = field(default_factory=dict)

    def holds_for(self, totals: Mapping[Key, PeriodTotals]) -> bool:
        """True when ``totals`` split the batch exactly as planned.

        Requests take credits in id order until none are left, so the split depends on the
        credits available only up to the batch's eligible cost: it is the same for any two
        amounts that agree once capped at that cost.
        """
        for key, share in self.shares.items():
            state = totals.get(key)
            available = 0 if state is None else available_credits(state)
            if min(available, share.eligible_nano_usd) != min(share.available, share.eligible_nano_usd):
                return False
        return True

    def apply_to(self, totals: Mapping[Key, PeriodTotals]) -> None:
        """Add what the batch took to ``totals`` (locked, and ``holds_for`` them)."""
        for key, share in self.shares.items():
            state = totals[key]
            state.credits_used_nano_usd += share.from_credits_nano_usd
            state.payg_nano_usd += share.payg_nano_usd
            state.written_off_nano_usd += share.written_off_nano_usd


def available_credits(state: PeriodTotals) -> int:
    return max(0, state.credits_granted_nano_usd - state.credits_used_nano_usd)


def split_costs(
    rows: Sequence[SettledRow],
    costs: Mapping[int, int],
    totals: Mapping[Key, PeriodTotals],
    *,
    eligible: Mapping[str, bool],
    plans: Mapping[str, str],
    payg_plans: Collection[str],
    posting_period: Callable[[SettledRow], str],
    pools: Mapping[str, Sequence[SpendableCredit]] | None = None,
) -> CostSplit:
    """Each request's cost: the period's plan credits first (credit-eligible providers only), then the
    account's grants and prepaid credits that pay for the request's period, soonest expiry first (any
    billable request), then pay-as-you-go when its account's plan has it, else written off; posted
    once, keyed ``cost:<usage_record_id>``, with the plan it was split under.

    ``eligible``: per provider; ``plans``: per billing account; ``payg_plans``: the plans with
    pay-as-you-go; a key missing from ``totals`` has no credits; ``pools``: per account, its locked
    grants in spending order (their ``remaining_nano_usd`` is spent here). ``totals`` are not changed.
    """
    split = CostSplit([])
    shares = split.shares
    # A batch names a few hundred accounts thousands of times: their codes once each.
    codes_of: dict[Key, tuple[str, str, str]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        period = posting_period(row)
        account = row.billing_account
        key = (account, period)
        share = shares.get(key)
        if share is None:
            state = totals.get(key)
            share = shares[key] = KeyShare(0 if state is None else available_credits(state))
            codes_of[key] = (codes.credits(account, period), codes.receivable(account, period), codes.write_off(period))
        cost = costs[row.id]
        from_credits = 0
        if eligible[row.provider_id]:
            share.eligible_nano_usd += cost
            from_credits = min(cost, max(0, share.available - share.from_credits_nano_usd))
        rest = cost - from_credits
        share.from_credits_nano_usd += from_credits
        from_grants: list[tuple[str, int]] = []
        if rest and pools:
            for grant in pools.get(account, ()):
                if grant.pays_for(row.period):
                    take = min(rest, grant.remaining_nano_usd)
                    grant.remaining_nano_usd -= take
                    split.taken_from_grants[grant.grant_id] = split.taken_from_grants.get(grant.grant_id, 0) + take
                    split.grant_accounts[grant.grant_id] = account
                    from_grants.append((grant.code, take))
                    rest -= take
                    if not rest:
                        break
        plan = plans[account]
        if plan in payg_plans:
            payg_part, written_off = rest, 0
        else:
            payg_part, written_off = 0, rest
        share.payg_nano_usd += payg_part
        share.written_off_nano_usd += written_off
        account_codes = codes_of[key]
        late = row.period != period
        split.postings.append(
            Posting(
                kind=codes.LATE_REQUEST_COST if late else codes.REQUEST_COST,
                idempotency_key=f"cost:{row.id}",
                period=period,
                original_period=row.period if late else None,
                account_name=account,
                provider_id=row.provider_id,
                usage_record_id=row.id,
                plan=plan,
                entries=(
                    (account_codes[0], from_credits),
                    *from_grants,
                    (account_codes[1], payg_part),
                    (account_codes[2], written_off),
                    (codes.payable(row.provider_id, period), -cost),
                ),
            )
        )
    return split
