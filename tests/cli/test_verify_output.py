"""``metering verify``'s report on a narrow terminal: nothing wider than the terminal, no check name cut
short, and the breach lines printed as they are (they are data, not markup)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli.verify import print_report
from metering.ledger.verify import Check, VerifyReport


def _report() -> VerifyReport:
    breached = Check("priced_once", "each priced request has exactly one cost transaction, for its cost")
    breached.breach("request 9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b of together [2026-10] has 2 cost transactions")
    breached.breach_count = 14
    warned = Check("spending_limits", "no period's pay-as-you-go over its spending limit, except by estimate error")
    warned.warn("globex 2026-10: pay-as-you-go 1000412345 nano-USD over the limit 1000000000 by [bold]412345[/bold]")
    quiet = Check("free_not_invoiced", "no account on a plan without pay-as-you-go has a receivable")
    return VerifyReport(checks=[breached, warned, quiet])


def _printed(width: int) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    print_report(_report(), console)
    return console.export_text()


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_no_line_is_wider_than_the_terminal(width: int) -> None:
    assert max(len(line) for line in _printed(width).splitlines()) <= width


def test_at_60_columns_check_names_and_results_are_whole() -> None:
    text = _printed(60)
    for name in ("priced_once", "spending_limits", "free_not_invoiced"):
        assert name in text
    assert "…" not in text.split("BREACH priced_once")[0]  # nothing in the table cut short with an ellipsis
    assert "BREACH ×14" in text and "ok, 1" in text


def test_breach_and_warning_lines_are_printed_literally() -> None:
    text = " ".join(_printed(200).split())
    assert "[2026-10]" in text and "by [bold]412345[/bold]" in text
    assert "… 13 more" in text
    assert "ledger BREACHED: 14 breach(es)" in text
