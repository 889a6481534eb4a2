"""metering.money: the half-up rule and the one USD formatting, on integers only."""

from __future__ import annotations

import pytest

from metering.money import div_half_up, duration_cost_nano, format_cents, format_usd, tokens_cost_nano


class TestDivHalfUp:
    @pytest.mark.parametrize(
        ("numerator", "denominator", "expected"),
        [(0, 7, 0), (14, 7, 2), (3, 2, 2), (5, 4, 1), (7, 4, 2), (-3, 2, -1), (-5, 4, -1), (-7, 4, -2)],
    )
    def test_rounds_to_nearest_and_ties_towards_plus_infinity(
        self, numerator: int, denominator: int, expected: int
    ) -> None:
        assert div_half_up(numerator, denominator) == expected

    def test_prices_use_it(self) -> None:
        assert duration_cost_nano(1, 500) == 1  # 0.5 nano rounds up
        assert duration_cost_nano(1, 499) == 0
        assert tokens_cost_nano(1, 500_000) == 1
        assert tokens_cost_nano(1, 499_999) == 0


class TestFormatUsd:
    def test_exact_to_the_nano_by_default(self) -> None:
        assert format_usd(1_200_000) == "$0.001200000"
        assert format_usd(1_234_567_890_123) == "$1,234.567890123"
        assert format_usd(-1_200_000) == "-$0.001200000"
        assert format_usd(0) == "$0.000000000"

    def test_fewer_decimals_round_half_up(self) -> None:
        assert format_usd(1_234_567_890, decimals=6) == "$1.234568"
        assert format_usd(1_234_567_499, decimals=6) == "$1.234567"
        assert format_usd(1_234_567_500, decimals=6) == "$1.234568"
        assert format_usd(999_999_999_500, decimals=6) == "$1,000.000000"
        assert format_usd(1_500_000_000, decimals=0) == "$2"

    def test_trim_drops_trailing_zeros_and_the_point(self) -> None:
        assert format_usd(500_000_000, trim=True) == "$0.5"
        assert format_usd(2_000_000_000, trim=True) == "$2"
        assert format_usd(1_000_000_000_001, trim=True) == "$1,000.000000001"
        assert format_usd(0, trim=True) == "$0"

    def test_refuses_more_than_nine_decimals(self) -> None:
        with pytest.raises(ValueError):
            format_usd(1, decimals=10)


class TestFormatCents:
    def test_whole_cents_as_dollars(self) -> None:
        assert format_cents(123_456) == "$1,234.56"
        assert format_cents(5) == "$0.05"
        assert format_cents(-123_456) == "-$1,234.56"
