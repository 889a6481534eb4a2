"""Rounding to cents loses and invents nothing: line apportionment and the carry over many periods."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from metering.config import set_settings
from metering.db import Database
from metering.invoicing.cents import apportion_cents
from metering.invoicing.service import invoicing_service
from metering.ledger import codes
from metering.ledger.service import ledger_service
from metering.money import NANO_PER_CENT
from tests.conftest import make_settings
from tests.factories.accounts import create_account
from tests.metering.invoicing.helpers import invoices, lines
from tests.support import databases

PERIODS = ["2025-11", "2025-12", "2026-01", "2026-02", "2026-03", "2026-04", "2026-05"]
AFTER_ALL = datetime(2026, 11, 5, tzinfo=UTC)

amounts = st.one_of(st.integers(1, 3 * NANO_PER_CENT), st.integers(1, 10**11))


class TestApportionCents:
    @given(
        st.lists(st.integers(-(10**10), 10**11), min_size=1, max_size=8),
        st.integers(0, NANO_PER_CENT - 1),
    )
    def test_lines_sum_to_the_invoice_and_stay_within_a_cent(self, line_amounts: list[int], carried_in: int) -> None:
        total = sum(line_amounts) + carried_in
        if total < 0:
            return
        cents = apportion_cents(line_amounts, total // NANO_PER_CENT)
        assert sum(cents) == total // NANO_PER_CENT
        for amount, line_cents in zip(line_amounts, cents):
            assert line_cents - amount // NANO_PER_CENT in (0, 1)

    def test_missing_cents_go_to_the_largest_sub_cent_parts(self) -> None:
        # 4.9 + 3.2 + 1.95 cents + 0.5 carried = 10.55 cents: floors 4+3+1, two more to 4.9 and 1.95.
        assert apportion_cents([49_000_000, 32_000_000, 19_500_000], 10) == [5, 3, 2]

    def test_ties_go_to_the_earlier_line(self) -> None:
        assert apportion_cents([5_000_000, 5_000_000], 1) == [1, 0]


@hypothesis_settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["together", "fireworks-ai"]), amounts, max_size=2),
        min_size=1,
        max_size=len(PERIODS),
    )
)
def test_invoiced_cents_plus_carry_equal_all_payg(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory, payg_by_period: list[dict[str, int]]
) -> None:
    """Over any run of periods: invoiced cents * 10^7 + the carried remainder == pay-as-you-go nano-USD."""
    directory = tmp_path_factory.mktemp("carry")
    url = databases.copy_sqlite(sqlite_template, directory)
    set_settings(make_settings(url, directory))
    try:
        asyncio.run(_close_in_sequence(url, payg_by_period))
    finally:
        set_settings(None)


async def _close_in_sequence(url: str, payg_by_period: list[dict[str, int]]) -> None:
    db = Database(url)
    try:
        async with db.session_scope() as session:
            await create_account(session, "alice", plan="pro")
        for period, by_provider in zip(PERIODS, payg_by_period):
            async with db.session_scope() as session:
                for provider, amount in by_provider.items():
                    await ledger_service.post(
                        session,
                        kind="test_payg",
                        idempotency_key=f"{period}:{provider}",
                        period=period,
                        provider_id=provider,
                        entries=[
                            (codes.receivable("alice", period), amount),
                            (codes.payable(provider, period), -amount),
                        ],
                    )
                await invoicing_service.close_period(session, period=period, force=True, now=AFTER_ALL)
        found = sorted((await invoices(db)).values(), key=lambda invoice: invoice.period)
        payg = sum(sum(by_provider.values()) for by_provider in payg_by_period)
        carried = found[-1].carried_out_nano_usd if found else 0
        assert sum(invoice.amount_cents for invoice in found) * NANO_PER_CENT + carried == payg
        for before, after in itertools.pairwise(found):
            assert after.carried_in_nano_usd == before.carried_out_nano_usd
        for invoice in found:
            assert sum(line.amount_cents for line in (await lines(db, invoice.id)).values()) == invoice.amount_cents
    finally:
        await db.dispose()
