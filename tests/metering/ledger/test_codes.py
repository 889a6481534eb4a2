"""Ledger account codes round-trip through parse."""

from __future__ import annotations

import pytest

from metering.ledger import codes


class TestParse:
    @pytest.mark.parametrize(
        ("code", "expected"),
        [
            (codes.credits("alice", "2026-11"), codes.LedgerCode("credits", "alice", "2026-11")),
            (codes.receivable("acme", "2026-12"), codes.LedgerCode("receivable", "acme", "2026-12")),
            (codes.payable("fireworks-ai", "2026-11"), codes.LedgerCode("payable", "fireworks-ai", "2026-11")),
            (codes.credits_expense("2026-11"), codes.LedgerCode("credits_expense", None, "2026-11")),
            (codes.write_off("2026-11"), codes.LedgerCode("write_off", None, "2026-11")),
        ],
    )
    def test_round_trip(self, code: str, expected: codes.LedgerCode) -> None:
        assert codes.parse(code) == expected

    @pytest.mark.parametrize("code", ["cash", "credits:2026-11", "payable::2026-11", "bogus:a:2026-11"])
    def test_rejects_other_codes(self, code: str) -> None:
        with pytest.raises(ValueError):
            codes.parse(code)
