"""The demo's tables on any terminal: no line wider than the terminal, and no amount or name folded
over two lines; columns are left out, least important first, and said so."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from demo.report import ACCOUNT_COLUMNS, PROVIDER_COLUMNS, display_usd, print_summary

# Wide figures on purpose: thousands separators, every refusal reason, the longest provider names.
SUMMARY = {
    "period": "2026-10",
    "accounts": {
        "frida": {
            "kind": "user",
            "plan": "free",
            "seats": 1,
            "requests": 93,
            "refusals": {"credits_exhausted": 48, "spending_limit_reached": 1_204},
            "credits_granted_nano_usd": 100_000_000,
            "credits_used_nano_usd": 99_874_074,
            "payg_nano_usd": 0,
            "written_off_nano_usd": 125_926,
            "invoice_cents": None,
            "invoice_status": None,
        },
        "enterprise-org": {
            "kind": "org",
            "plan": "enterprise",
            "seats": 250,
            "requests": 1_234_567,
            "refusals": {"provider_disabled": 28},
            "credits_granted_nano_usd": 500_000_000_000,
            "credits_used_nano_usd": 500_000_000_000,
            "payg_nano_usd": 1_234_567_891_234_567,
            "written_off_nano_usd": 0,
            "invoice_cents": 123_456_789_123,
            "invoice_status": "pending",
        },
    },
    "providers": {
        "fireworks-ai": {
            "pricing": "cost_endpoint",
            "routed": 112,
            "custom_key": 28,
            "priced": 82,
            "quarantined": 0,
            "unpriced": 2,
            "payable_nano_usd": 23_309_000,
        },
        "hf-inference": {
            "pricing": "compute_time",
            "routed": 1_234_567,
            "custom_key": 0,
            "priced": 1_234_567,
            "quarantined": 0,
            "unpriced": 0,
            "payable_nano_usd": 1_234_567_891_234_567,
        },
    },
    "totals": {
        "credits_granted_nano_usd": 500_100_000_000,
        "credits_used_nano_usd": 500_099_874_074,
        "payg_nano_usd": 1_234_567_891_234_567,
        "written_off_nano_usd": 125_926,
        "invoice_cents": 123_456_789_123,
        "payable_nano_usd": 1_234_567_914_543_567,
    },
    "close_period": "period 2026-10 closed: 1 invoices",
}
# What must never be cut in two while its column is shown.
WORDS = ("fireworks-ai", "hf-inference", "enterprise-org", display_usd(1_234_567_891_234_567), "$1,234,567,891.23")


def _printed(width: int) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    print_summary(console, SUMMARY)
    return console.export_text()


def _tables(text: str) -> str:
    return text.split("Left out for the terminal's width")[0]


@pytest.mark.parametrize("width", [40, 50, 60, 72, 80, 100, 120, 160, 200])
def test_no_line_is_wider_than_the_terminal(width: int) -> None:
    assert max(len(line) for line in _printed(width).splitlines()) <= width


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160])
def test_no_amount_or_name_is_folded(width: int) -> None:
    tables = _tables(_printed(width))
    for word in WORDS:
        assert word in tables, (width, word)


def test_at_60_columns_the_bill_stays_and_the_rest_is_named() -> None:
    text = _printed(60)
    header_lines = [line for line in text.splitlines() if line.startswith("┃")]
    shown = " ".join(header_lines)
    for header in ("account", "pay-as-you-go", "invoice", "provider", "owed to provider"):
        assert all(part in shown for part in header.split()), header
    left_out = text.split("Left out for the terminal's width: ")[1].split(" (a wider")[0]
    assert "written off" in " ".join(left_out.split())


def test_a_wide_terminal_shows_every_column_and_no_note() -> None:
    text = _printed(200)
    assert "Left out" not in text
    headers = " ".join(line for line in text.splitlines() if line.startswith("┃"))
    for column in (*ACCOUNT_COLUMNS, *PROVIDER_COLUMNS):
        assert column.header in headers, column.header
