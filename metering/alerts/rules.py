"""Which alert events a posting of costs or an authorize decision fires, as pure functions of the figures
before and after it.

- ``credits.threshold`` (each ``percent`` of the account's credit thresholds) and
  ``credits.exhausted``: the period's included credits *used* crossed that share of those
  granted in this posting. Credits used only grow as costs post, so a crossing is seen by the
  one posting that makes it.
- ``spending_limit.threshold`` (each ``percent``) and ``spending_limit.reached``: the
  pay-as-you-go *committed* (charged plus in flight, ``Figures.payg_committed``, the amount
  authorize refuses on) is at or above that share of the limit. Authorize's holds move this
  figure between postings; the decision that crosses a share writes the event
  (``decision_events``), and a posting judges by level, catching what actual costs above
  their estimates commit; the event's unique cause keeps it to one per period. A limit of 0
  allows no pay-as-you-go at all and has no shares to alert on.

Each fires at most once per account, period and percent: its ``dedupe_key`` is unique.
"""

from __future__ import annotations

from dataclasses import dataclass

from metering.balances.repository import PeriodTotals
from metering.charging.rule import Figures
from metering.events.service import NewEvent
from metering.events.types import (
    CREDITS_EXHAUSTED,
    CREDITS_THRESHOLD,
    SPENDING_LIMIT_REACHED,
    SPENDING_LIMIT_THRESHOLD,
)


@dataclass(frozen=True, slots=True)
class AlertTerms:
    """What an account's alerts are judged against."""

    spending_limit_nano_usd: int | None
    credits_percent: tuple[int, ...]
    spending_limit_percent: tuple[int, ...]


def figures_of(totals: PeriodTotals, extra: int = 0) -> Figures:
    """An account period's totals, and the account's spendable grants ``extra``, as the money rule reads them."""
    return Figures(
        granted=totals.credits_granted_nano_usd,
        used=totals.credits_used_nano_usd,
        payg=totals.payg_nano_usd,
        in_flight=totals.pending_estimate_nano_usd + totals.held_nano_usd,
        in_flight_payg_only=totals.pending_payg_only_nano_usd + totals.held_payg_only_nano_usd,
        extra=extra,
    )


def may_fire(before: Figures, after: Figures) -> bool:
    """Whether any thresholds could fire for this change: credits used crossed a whole percent, or
    pay-as-you-go is committed (a spending limit may apply). Lets a posting skip reading the
    account's thresholds when none could (thresholds are whole percentages)."""
    granted = after.granted
    if granted > 0 and before.used < granted and before.used * 100 // granted < after.used * 100 // granted:
        return True
    return after.payg_committed > 0


def posting_events(account: str, period: str, *, before: Figures, after: Figures, terms: AlertTerms) -> list[NewEvent]:
    """The alert events of one account period whose totals went from ``before`` to ``after``."""
    events: list[NewEvent] = []
    granted = after.granted
    if granted > 0 and after.used > before.used:
        credits = {"credits_granted_nano_usd": granted, "credits_used_nano_usd": after.used}
        for percent in terms.credits_percent:
            if before.used * 100 < percent * granted <= after.used * 100:
                key = f"{CREDITS_THRESHOLD}:{account}:{period}:{percent}"
                events.append(NewEvent(CREDITS_THRESHOLD, account, period, key, {"percent": percent, **credits}))
        if before.used < granted <= after.used:
            events.append(
                NewEvent(CREDITS_EXHAUSTED, account, period, f"{CREDITS_EXHAUSTED}:{account}:{period}", credits)
            )
    limit = terms.spending_limit_nano_usd
    if limit is not None and limit > 0:
        committed = after.payg_committed
        spending = {"spending_limit_nano_usd": limit, "committed_nano_usd": committed, "payg_nano_usd": after.payg}
        for percent in terms.spending_limit_percent:
            if committed * 100 >= percent * limit:
                key = f"{SPENDING_LIMIT_THRESHOLD}:{account}:{period}:{percent}"
                events.append(
                    NewEvent(SPENDING_LIMIT_THRESHOLD, account, period, key, {"percent": percent, **spending})
                )
        if committed >= limit:
            key = f"{SPENDING_LIMIT_REACHED}:{account}:{period}"
            events.append(NewEvent(SPENDING_LIMIT_REACHED, account, period, key, spending))
    return events


def decision_events(
    account: str, period: str, *, before: Figures, after: Figures, terms: AlertTerms, refused: bool
) -> list[NewEvent]:
    """The spending-limit events of one authorize decision, written in its transaction (SPEC §11).

    ``before``: the locked figures; ``after``: the same with the decision's hold (equal when
    refused). A threshold fires when the hold takes the committed pay-as-you-go across it;
    ``spending_limit.reached`` when the hold takes it to the limit, or when the decision is
    refused for the limit (``refused``). Judged by crossing, so a decision that crosses nothing
    writes nothing; postings judge by level (``posting_events``) and the unique cause keeps
    the two to one event.
    """
    limit = terms.spending_limit_nano_usd
    if limit is None or limit <= 0:
        return []
    was, now = before.payg_committed, after.payg_committed
    spending = {"spending_limit_nano_usd": limit, "committed_nano_usd": now, "payg_nano_usd": after.payg}
    events = [
        NewEvent(
            SPENDING_LIMIT_THRESHOLD,
            account,
            period,
            f"{SPENDING_LIMIT_THRESHOLD}:{account}:{period}:{percent}",
            {"percent": percent, **spending},
        )
        for percent in terms.spending_limit_percent
        if was * 100 < percent * limit <= now * 100
    ]
    if refused or was < limit <= now:
        key = f"{SPENDING_LIMIT_REACHED}:{account}:{period}"
        events.append(NewEvent(SPENDING_LIMIT_REACHED, account, period, key, spending))
    return events
