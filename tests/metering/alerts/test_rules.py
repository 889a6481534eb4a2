"""Which alert events a posting fires, from the totals before and after it (pure)."""

from __future__ import annotations

from metering.alerts.rules import AlertTerms, may_fire, posting_events
from metering.charging.rule import Figures

GRANTED = 2_000_000_000
TERMS = AlertTerms(spending_limit_nano_usd=None, credits_percent=(50, 80, 100), spending_limit_percent=(80, 100))


def fired(before: Figures, after: Figures, terms: AlertTerms = TERMS) -> list[tuple[str, int | None]]:
    events = posting_events("alice", "2026-12", before=before, after=after, terms=terms)
    return [(event.type, event.data.get("percent")) for event in events]


def credits(used: int) -> Figures:
    return Figures(granted=GRANTED, used=used, payg=0, in_flight=0)


class TestCredits:
    def test_a_posting_crossing_two_thresholds_fires_both(self) -> None:
        assert fired(credits(900_000_000), credits(1_700_000_000)) == [
            ("credits.threshold", 50),
            ("credits.threshold", 80),
        ]

    def test_exactly_at_the_threshold_counts_as_crossed(self) -> None:
        assert fired(credits(999_999_999), credits(1_000_000_000)) == [("credits.threshold", 50)]

    def test_a_posting_that_stays_past_a_threshold_fires_nothing(self) -> None:
        assert fired(credits(1_100_000_000), credits(1_200_000_000)) == []

    def test_using_the_last_credit_fires_100_and_exhausted(self) -> None:
        events = posting_events("alice", "2026-12", before=credits(1_900_000_000), after=credits(GRANTED), terms=TERMS)
        assert [(e.type, e.dedupe_key) for e in events] == [
            ("credits.threshold", "credits.threshold:alice:2026-12:100"),
            ("credits.exhausted", "credits.exhausted:alice:2026-12"),
        ]
        assert events[0].data == {"percent": 100, "credits_granted_nano_usd": GRANTED, "credits_used_nano_usd": GRANTED}

    def test_no_credits_granted_fires_nothing(self) -> None:
        nothing = Figures(granted=0, used=0, payg=5, in_flight=0)
        assert fired(nothing, Figures(granted=0, used=0, payg=50, in_flight=0)) == []

    def test_the_accounts_own_thresholds_are_used(self) -> None:
        own = AlertTerms(spending_limit_nano_usd=None, credits_percent=(10,), spending_limit_percent=())
        assert fired(credits(0), credits(1_900_000_000), own) == [("credits.threshold", 10)]


class TestSpendingLimit:
    LIMIT = AlertTerms(spending_limit_nano_usd=1_000, credits_percent=(), spending_limit_percent=(80, 100))

    def test_committed_counts_what_is_in_flight(self) -> None:
        # Credits used up: 700 charged and 150 in flight (credits cannot cover it) is 85 % of the limit.
        before = Figures(granted=100, used=100, payg=600, in_flight=0)
        after = Figures(granted=100, used=100, payg=700, in_flight=150)
        events = posting_events("acme", "2026-12", before=before, after=after, terms=self.LIMIT)
        assert [(e.type, e.data["percent"], e.data["committed_nano_usd"]) for e in events] == [
            ("spending_limit.threshold", 80, 850)
        ]

    def test_reaching_the_limit_fires_100_and_reached(self) -> None:
        after = Figures(granted=0, used=0, payg=1_000, in_flight=0)
        assert fired(after, after, self.LIMIT) == [
            ("spending_limit.threshold", 80),
            ("spending_limit.threshold", 100),
            ("spending_limit.reached", None),
        ]

    def test_judged_by_level_so_a_limit_passed_by_holds_still_fires(self) -> None:
        # Holds placed between postings took committed past 80 % unseen: the next posting fires it.
        before = Figures(granted=0, used=0, payg=100, in_flight=800)
        after = Figures(granted=0, used=0, payg=150, in_flight=750)
        assert fired(before, after, self.LIMIT) == [("spending_limit.threshold", 80)]

    def test_no_limit_or_a_zero_limit_fires_nothing(self) -> None:
        spent = Figures(granted=0, used=0, payg=10**12, in_flight=0)
        assert fired(spent, spent) == []
        zero = AlertTerms(spending_limit_nano_usd=0, credits_percent=(), spending_limit_percent=(80, 100))
        assert fired(spent, spent, zero) == []


class TestMayFire:
    def test_only_a_whole_percent_crossed_or_committed_pay_as_you_go_needs_the_thresholds(self) -> None:
        assert not may_fire(credits(1_000_000_000), credits(1_019_999_999))  # 50 % → 50.99 %
        assert may_fire(credits(1_019_999_999), credits(1_020_000_000))  # → 51 %
        assert not may_fire(credits(GRANTED), credits(GRANTED))
        assert may_fire(credits(GRANTED), Figures(granted=GRANTED, used=GRANTED, payg=1, in_flight=0))
