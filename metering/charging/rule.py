"""The money rule of SPEC §5.1, as one pure function of an account period's totals.

Authorize (both its paths), the settle split and ``metering verify`` read in-flight money
through this rule. With G = credits granted, U = credits used, P = pay-as-you-go charged,
Fc / Fn = in flight (held + pending estimates) for credit-eligible / other providers,
X = the account's spendable grants and prepaid credits (SPEC §3: after the plan's credits,
before pay-as-you-go, for any billable request), L = the spending limit (None = no cap) and
e = the estimate of the request asked about:

    plan_over         = max(0, U + Fc − G)                 (in flight plan credits cannot cover)
    plan_free         = max(0, G − U − Fc)                 (plan credits still free)
    extra_free        = max(0, X − plan_over − Fn)         (grants still free)
    credits_remaining = plan_free + extra_free
    payg_committed    = P + max(0, plan_over + Fn − X)
    payg_part(e)      = what of e neither plan_free (credit-eligible providers only) nor extra_free covers

- no pay-as-you-go (free): allowed iff credits can pay for it (payg_part(e) == 0, with some
  credit left for that provider); else ``credits_exhausted``;
- pay-as-you-go: allowed iff credits can pay for it, or L is None, or
  (payg_committed < L and payg_committed + payg_part(e) ≤ L); else ``spending_limit_reached``.

So with exact estimates a limit is never passed: every allowed request's pay-as-you-go part
was counted before the next decision, whatever provider it went to. With X = 0 this is the
rule before grants existed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figures:
    """The money of one account period as the rule reads it."""

    granted: int
    used: int
    payg: int
    in_flight: int
    # The part of ``in_flight`` whose provider is not credit-eligible.
    in_flight_payg_only: int = 0
    # Spendable grants and prepaid credits of the account (``metering.credit_grants``).
    extra: int = 0

    @property
    def in_flight_eligible(self) -> int:
        return self.in_flight - self.in_flight_payg_only

    @property
    def plan_free(self) -> int:
        return max(0, self.granted - self.used - self.in_flight_eligible)

    @property
    def extra_free(self) -> int:
        plan_over = max(0, self.used + self.in_flight_eligible - self.granted)
        return max(0, self.extra - plan_over - self.in_flight_payg_only)

    @property
    def credits_remaining(self) -> int:
        return self.plan_free + self.extra_free

    @property
    def payg_committed(self) -> int:
        plan_over = max(0, self.used + self.in_flight_eligible - self.granted)
        return self.payg + max(0, plan_over + self.in_flight_payg_only - self.extra)

    def limit_remaining(self, limit: int | None) -> int | None:
        return None if limit is None else max(0, limit - self.payg_committed)

    def with_hold(self, amount: int, *, credit_eligible: bool) -> Figures:
        """These figures once a hold of ``amount`` for a provider of that eligibility is in flight."""
        return Figures(
            self.granted,
            self.used,
            self.payg,
            self.in_flight + amount,
            self.in_flight_payg_only + (0 if credit_eligible else amount),
            self.extra,
        )


def payg_part(figures: Figures, *, credit_eligible: bool, estimate: int) -> int:
    """How much of ``estimate`` credits cannot cover: plan credits (credit-eligible providers only), then grants."""
    rest = estimate - min(estimate, figures.plan_free) if credit_eligible else estimate
    return rest - min(rest, figures.extra_free)


def credits_for_provider(figures: Figures, *, credit_eligible: bool) -> int:
    """The credit still free that a request to a provider of that eligibility may use."""
    return (figures.plan_free if credit_eligible else 0) + figures.extra_free


def money_refusal(
    figures: Figures, *, pays_as_you_go: bool, limit: int | None, credit_eligible: bool, estimate: int
) -> str | None:
    """The reason a billable request with ``estimate`` is refused, or None: the rule of the module docstring."""
    part = payg_part(figures, credit_eligible=credit_eligible, estimate=estimate)
    if part == 0 and credits_for_provider(figures, credit_eligible=credit_eligible) > 0:
        return None
    if not pays_as_you_go:
        return "credits_exhausted"
    if limit is None:
        return None
    committed = figures.payg_committed
    if committed < limit and committed + part <= limit:
        return None
    return "spending_limit_reached"
