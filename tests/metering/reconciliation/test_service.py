"""reconcile: a statement against the ledger side of a provider's month, exact to the nano-USD; refusals keep nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from metering.db import Database
from metering.errors import ProviderNotFound
from metering.models import Reconciliation, ReconciliationItem, ReconciliationLine
from metering.periods import utcnow
from metering.reconciliation.errors import DuplicateRequestId, InvalidPeriod, InvalidStatement
from metering.reconciliation.service import LIST_LIMIT, Discrepancy, ReconciliationReport, reconciliation_service
from tests.metering.reconciliation.world import LEDGER, PERIOD, STATEMENT, chunks, csv_lines, priced_month


async def reconcile(db: Database, body: bytes, **options: object) -> ReconciliationReport:
    arguments: dict[str, Any] = {"provider_id": "together", "period": PERIOD, "actor": "fin", **options}
    return await reconciliation_service.reconcile(db, statement=chunks(body), **arguments)


async def stored(db: Database) -> tuple[int, int, int]:
    """(reconciliations, items, staged lines) in the database."""
    async with db.session_scope() as session:
        found = [
            int(await session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Reconciliation, ReconciliationItem, ReconciliationLine)
        ]
    return found[0], found[1], found[2]


def counts(done: Reconciliation) -> tuple[int, int, int, int, int]:
    """(lines, matched, amount mismatches, only at the provider, only in the ledger)."""
    return (done.lines, done.matched, done.amount_mismatch_count, done.only_provider_count, done.only_ledger_count)


@pytest.fixture
async def month(db: Database) -> None:
    await priced_month(db)


class TestReconcile:
    async def test_each_request_lands_on_one_side_with_exact_amounts(self, db: Database, month: None) -> None:
        report = await reconcile(db, csv_lines(STATEMENT.items()))
        done = report.reconciliation
        assert counts(done) == (9, 3, 1, 5, 1)
        assert done.provider_total_nano_usd == sum(STATEMENT.values()) == 2_901_615
        assert done.ledger_total_nano_usd == sum(LEDGER.values()) == 3_300_000
        assert report.amount_mismatch == [Discrepancy("r-mismatch", 1_000_000, 1_300_000)]
        assert report.only_provider == [
            Discrepancy("ghost", None, 42),
            Discrepancy("r-custom", None, 900),
            Discrepancy("r-pending", None, 500),
            Discrepancy("r-shared", None, 123),
            Discrepancy("r-this-month", None, 50),
        ]
        assert report.only_ledger == [Discrepancy("r-ledger-only", 700_000, None)]
        assert (done.status, done.provider_id, done.period, done.created_by) == ("complete", "together", PERIOD, "fin")

    async def test_every_discrepancy_is_stored_and_the_staged_lines_are_gone(self, db: Database, month: None) -> None:
        report = await reconcile(db, csv_lines(STATEMENT.items(), newline=b"\r\n"))
        async with db.session_scope() as session:
            items = (
                await session.execute(
                    select(
                        ReconciliationItem.kind,
                        ReconciliationItem.request_id,
                        ReconciliationItem.ledger_nano_usd,
                        ReconciliationItem.provider_nano_usd,
                    ).where(ReconciliationItem.reconciliation_id == report.reconciliation.id)
                )
            ).all()
        assert sorted(items) == [
            ("amount_mismatch", "r-mismatch", 1_000_000, 1_300_000),
            ("only_ledger", "r-ledger-only", 700_000, None),
            ("only_provider", "ghost", None, 42),
            ("only_provider", "r-custom", None, 900),
            ("only_provider", "r-pending", None, 500),
            ("only_provider", "r-shared", None, 123),
            ("only_provider", "r-this-month", None, 50),
        ]
        assert await stored(db) == (1, 7, 0)

    async def test_small_batches_give_the_same_outcome(self, db: Database, month: None) -> None:
        whole = await reconcile(db, csv_lines(STATEMENT.items()))
        batched = await reconcile(db, csv_lines(STATEMENT.items()), batch_lines=2)
        assert batched.reconciliation.matched == whole.reconciliation.matched == 3
        assert (batched.amount_mismatch, batched.only_provider, batched.only_ledger) == (
            whole.amount_mismatch,
            whole.only_provider,
            whole.only_ledger,
        )

    async def test_an_empty_statement_leaves_the_whole_ledger_side(self, db: Database, month: None) -> None:
        report = await reconcile(db, b"request_id,cost_nano_usd\r\n")
        done = report.reconciliation
        assert (done.lines, done.matched, done.only_ledger_count, done.provider_total_nano_usd) == (0, 0, 5, 0)
        assert [item.request_id for item in report.only_ledger] == sorted(LEDGER)

    async def test_lists_hold_the_first_by_request_id_and_counts_hold_all(self, db: Database, month: None) -> None:
        extra = [(f"x-{index:04d}", index) for index in range(LIST_LIMIT + 50)]
        report = await reconcile(db, csv_lines([*STATEMENT.items(), *extra]))
        assert report.reconciliation.only_provider_count == 5 + LIST_LIMIT + 50
        assert report.reconciliation.provider_total_nano_usd == sum(STATEMENT.values()) + sum(range(LIST_LIMIT + 50))
        assert len(report.only_provider) == LIST_LIMIT
        assert report.only_provider[0] == Discrepancy("ghost", None, 42)
        assert report.only_provider[-1] == Discrepancy(f"x-{LIST_LIMIT - 6:04d}", None, LIST_LIMIT - 6)

    async def test_another_provider_or_period_sees_none_of_these(self, db: Database, month: None) -> None:
        report = await reconcile(db, csv_lines([("r-shared", 123)]), provider_id="fireworks-ai")
        assert (report.reconciliation.matched, report.reconciliation.ledger_total_nano_usd) == (1, 123)
        earlier = await reconcile(db, csv_lines([("r-match", 1_200_000)]), period="2020-01")
        assert (earlier.reconciliation.only_provider_count, earlier.reconciliation.only_ledger_count) == (1, 0)


class TestRefusals:
    async def test_a_request_id_stated_twice_across_batches_names_both_lines(self, db: Database, month: None) -> None:
        body = csv_lines([("a", 1), ("b", 2), ("c", 3), ("b", 4)])
        with pytest.raises(DuplicateRequestId) as caught:
            await reconcile(db, body, batch_lines=2)
        assert caught.value.detail == "line 5: request_id 'b' was already stated on line 3"
        assert await stored(db) == (0, 0, 0)

    async def test_a_request_id_stated_twice_in_one_batch_names_both_lines(self, db: Database, month: None) -> None:
        with pytest.raises(DuplicateRequestId) as caught:
            await reconcile(db, csv_lines([("a", 1), ("b", 2), ("a", 1)]))
        assert caught.value.detail == "line 4: request_id 'a' was already stated on line 2"
        assert await stored(db) == (0, 0, 0)

    async def test_a_bad_line_after_staged_batches_keeps_nothing(self, db: Database, month: None) -> None:
        body = csv_lines([("a", 1), ("b", 2), ("c", 3)]) + b"d,1.5\n"
        with pytest.raises(InvalidStatement) as caught:
            await reconcile(db, body, batch_lines=1)
        assert caught.value.line == 5
        assert caught.value.detail.startswith("line 5: cost_nano_usd '1.5' is not a whole")
        assert await stored(db) == (0, 0, 0)

    async def test_an_unknown_provider_is_not_found(self, db: Database, month: None) -> None:
        with pytest.raises(ProviderNotFound):
            await reconcile(db, csv_lines([]), provider_id="nope")
        assert await stored(db) == (0, 0, 0)

    @pytest.mark.parametrize("period", ["1969-12", "9999-01", "2026-13", "2026-1", "26-11"])
    async def test_a_period_out_of_bounds_is_refused(self, db: Database, month: None, period: str) -> None:
        with pytest.raises(InvalidPeriod):
            await reconcile(db, csv_lines([]), period=period)


class TestAudit:
    async def test_who_when_why_and_what_it_replaced_are_kept(self, db: Database, month: None) -> None:
        before = utcnow()
        first = await reconcile(db, csv_lines(STATEMENT.items()), actor="fin", reason="November statement")
        second = await reconcile(db, csv_lines([("r-match", 1_200_000)]), actor="fin2", reason="corrected statement")
        assert (first.reconciliation.created_by, first.reconciliation.reason) == ("fin", "November statement")
        assert first.reconciliation.supersedes_id is None
        assert (second.reconciliation.created_by, second.reconciliation.supersedes_id) == (
            "fin2",
            first.reconciliation.id,
        )
        assert before <= first.reconciliation.created_at <= second.reconciliation.created_at <= utcnow()
        async with db.session_scope() as session:
            listed = await reconciliation_service.list_reconciliations(session, period=PERIOD)
        assert [(r.id, r.created_by, r.reason, r.lines) for r in listed] == [
            (second.reconciliation.id, "fin2", "corrected statement", 1),
            (first.reconciliation.id, "fin", "November statement", 9),
        ]

    async def test_an_upload_that_died_is_swept_by_the_next(self, db: Database, month: None) -> None:
        async with db.session_scope() as session:
            dead = Reconciliation(
                provider_id="together",
                period=PERIOD,
                status="loading",
                lines=0,
                matched=0,
                amount_mismatch_count=0,
                only_provider_count=0,
                only_ledger_count=0,
                provider_total_nano_usd=0,
                ledger_total_nano_usd=0,
                created_by="fin",
                created_at=utcnow() - timedelta(days=2),
            )
            session.add(dead)
            await session.flush()
            session.add(ReconciliationLine(reconciliation_id=dead.id, request_id="x", cost_nano_usd=1, line=2))
        report = await reconcile(db, csv_lines([]))
        assert await stored(db) == (1, 5, 0)
        assert report.reconciliation.supersedes_id is None
