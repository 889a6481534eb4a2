"""The money rule of SPEC §5.1, as one pure function of an account period's totals.

Authorize (both its paths), the settle split and ``metering verify`` read in-flight money
through this rule. With G = credits granted, U = credits used, P = pay-as-you-go charged,
Fc / Fn = in flight (held + pending estimates) for credit-eligible / other providers,
L = the spending limit (None = no cap) and e = the estimate of the request asked about:

    credits_remaining = max(0, G − U − Fc)                 (credits still free)
    payg_committed    = P + Fn + max(0, U + Fc − G)        (in flight credits cannot cover)
    payg_part(e)      = e − min(e, credits_remaining) for a credit-eligible provider, else e

- no pay-as-you-go (free): allowed iff the provider is credit-eligible, credits remain and
  e fits them; else ``credits_exhausted``;
- pay-as-you-go: allowed iff payg_part(e) == 0, or L is None, or
  (payg_committed < L and payg_committed + payg_part(e) ≤ L); else ``spending_limit_reached``.

So with exact estimates a limit is never passed: every allowed request's pay-as-you-go part
was counted before the next decision, whatever provider it went to.
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

    @property
    def in_flight_eligible(self) -> int:
        return self.in_flight - self.in_flight_payg_only

    @property
    def credits_remaining(self) -> int:
        return max(0, self.granted - self.used - self.in_flight_eligible)

    @property
    def payg_committed(self) -> int:
        return self.payg + self.in_flight_payg_only + max(0, self.used + self.in_flight_eligible - self.granted)

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
        )


def payg_part(figures: Figures, *, credit_eligible: bool, estimate: int) -> int:
    """How much of ``estimate`` credits cannot cover."""
    if not credit_eligible:
        return estimate
    return estimate - min(estimate, figures.credits_remaining)


def money_refusal(
    figures: Figures, *, pays_as_you_go: bool, limit: int | None, credit_eligible: bool, estimate: int
) -> str | None:
    """The reason a billable request with ``estimate`` is refused, or None: the rule of the module docstring."""
    remaining = figures.credits_remaining
    fits_credits = credit_eligible and remaining > 0 and estimate <= remaining
    if fits_credits:
        return None
    if not pays_as_you_go:
        return "credits_exhausted"
    if limit is None:
        return None
    committed = figures.payg_committed
    if (
        committed < limit
        and committed + payg_part(figures, credit_eligible=credit_eligible, estimate=estimate) <= limit
    ):
        return None
    return "spending_limit_reached"
