"""Export reading on both backends: every row once, in order, in bounded batches, totals equal to the ledger."""

from __future__ import annotations

import pytest

from metering.db import Database
from metering.errors import InvalidInput
from metering.exports.repository import export_repository
from metering.exports.service import export_service
from tests.factories.billing_data import cost_posting, grant_posting, post, seed_world

PERIOD = "2026-10"


@pytest.fixture
async def many_entries(db: Database) -> int:
    """301 transactions (601 entries) in the period, posted through the ledger service."""
    await seed_world(db)
    postings = [grant_posting("acme", PERIOD, 4_000_000_000)]
    postings += [
        cost_posting(f"cost:{i}", PERIOD, account="acme", provider="together", credits=i, payg=i % 7)
        for i in range(1, 301)
    ]
    await post(db, *postings)
    return 2 + sum(2 + (1 if i % 7 else 0) for i in range(1, 301))


class TestBatches:
    async def test_every_ledger_row_once_in_entry_order(self, db: Database, many_entries: int) -> None:
        sizes, ids, total = [], [], 0
        async for batch in export_repository.batches(db, report="ledger", period=PERIOD, batch_rows=100):
            sizes.append(len(batch))
            ids.extend(row[0] for row in batch)
            total += sum(row[-1] for row in batch)
        assert ids == sorted(ids) and len(set(ids)) == len(ids) == many_entries
        assert max(sizes) == 100
        assert total == 0

    async def test_count_matches(self, db: Database, many_entries: int) -> None:
        assert await export_service.count_rows(db, report="ledger", period=PERIOD) == many_entries
        assert await export_service.count_rows(db, report="provider-payables", period=PERIOD) == 1

    async def test_summary_totals_equal_the_ledger(self, db: Database, many_entries: int) -> None:
        rows = [
            row
            async for batch in export_repository.batches(db, report="provider-payables", period=PERIOD)
            for row in batch
        ]
        credits = sum(range(1, 301))
        payg = sum(i % 7 for i in range(1, 301))
        assert rows == [("together", PERIOD, credits + payg, 300)]
        receivables = [
            row async for batch in export_repository.batches(db, report="receivables", period=PERIOD) for row in batch
        ]
        assert receivables == [("acme", PERIOD, payg, sum(1 for i in range(1, 301) if i % 7))]
        credit_rows = [
            row async for batch in export_repository.batches(db, report="credits", period=PERIOD) for row in batch
        ]
        assert credit_rows == [("acme", PERIOD, 4_000_000_000, credits, 0, credits - 4_000_000_000)]

    async def test_progress_hears_every_row(self, db: Database, many_entries: int) -> None:
        seen: list[int] = []
        chunks = [
            c
            async for c in export_service.stream_report(
                db, report="ledger", period=PERIOD, fmt="jsonl", on_rows=seen.append
            )
        ]
        assert sum(seen) == many_entries == sum(chunk.count(b"\n") for chunk in chunks)


class TestPrepare:
    @pytest.mark.parametrize(
        ("report", "period", "fmt"), [("nope", PERIOD, "csv"), ("ledger", "2026-1", "csv"), ("ledger", PERIOD, "xls")]
    )
    def test_refuses_unknown_names(self, report: str, period: str, fmt: str) -> None:
        with pytest.raises(InvalidInput):
            export_service.prepare(report=report, period=period, fmt=fmt)
