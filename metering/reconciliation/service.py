"""Provider reconciliation (SPEC §8): a provider's monthly statement against what the ledger posted for it.

A multi-transaction entry point: a statement may hold millions of lines, so it is not read in
the request's one transaction. On SQLite every transaction holds the one writer lock, and one
transaction for an upload would stop ingest for as long as the client takes to send it; on
PostgreSQL it would hold a snapshot (and vacuum) back as long. Instead:

1. one transaction checks the provider, sweeps uploads that died (``STALE_LOADING_AFTER``) and
   stores the reconciliation as ``loading``;
2. the body is parsed as it streams (``metering.reconciliation.statement``) and staged in
   ``reconciliation_lines``, one short transaction per batch of lines; the primary key
   refuses a request id stated twice;
3. one transaction compares in SQL (a join per side, ``metering.reconciliation.repository``),
   stores every discrepancy as an item, the counts and totals, marks the reconciliation
   ``complete`` and deletes its staged lines.

Staging in a table of its own rather than straight into the items keeps the items what they
say (discrepancies only), and lets the comparison be three set operations over two indexed
tables. Any failure discards the loading reconciliation and its staged lines; what a killed
process leaves behind is swept by a later upload. Memory is one batch of lines, whatever the
statement's size.

Audit: ``reconciliations`` is append-only and records who uploaded (``created_by``), when,
why (``reason``), the reconciliation it replaces as the provider's latest for the period
(``supersedes_id``, the before) and its outcome (the after). ``audit_events`` is not used: its
rows belong to an account (a foreign key), and a provider is not one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from metering.analytics.bounds import period_problem
from metering.auth.errors import NotPermitted
from metering.auth.tokens import Principal
from metering.db import Database
from metering.errors import InvalidInput
from metering.models import Reconciliation
from metering.periods import utcnow
from metering.providers.service import provider_service
from metering.reconciliation.errors import DuplicateRequestId, InvalidPeriod, StagedTwice
from metering.reconciliation.repository import (
    AMOUNT_MISMATCH,
    ONLY_LEDGER,
    ONLY_PROVIDER,
    reconciliation_repository,
)
from metering.reconciliation.statement import BATCH_LINES, StatementLine, StatementTally, read_statement

log = logging.getLogger(__name__)

# Items of each kind an answer lists (the first by request id); the counts and the export have them all.
LIST_LIMIT = 100
# A reconciliation still loading after this long belongs to an upload that died: it is swept.
STALE_LOADING_AFTER = timedelta(hours=24)
MAX_REASON = 256


@dataclass(frozen=True, slots=True)
class Discrepancy:
    request_id: str
    ledger_nano_usd: int | None
    provider_nano_usd: int | None


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    """A complete reconciliation and the first ``LIST_LIMIT`` discrepancies of each kind, by request id."""

    reconciliation: Reconciliation
    amount_mismatch: list[Discrepancy]
    only_provider: list[Discrepancy]
    only_ledger: list[Discrepancy]


def check_period(period: str) -> str:
    problem = period_problem(period)
    if problem is not None:
        raise InvalidPeriod(problem, period=period)
    return period


def _check_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if not 0 < len(reason) <= MAX_REASON or not reason.isprintable():
        raise InvalidInput(f"reason must be 1 to {MAX_REASON} printable characters")
    return reason


class ReconciliationService:
    def check_may_reconcile(self, principal: Principal) -> None:
        """Reconciling writes finance records: the ``finance`` role only (``platform_admin`` reads, changes nothing)."""
        if not principal.is_finance:
            raise NotPermitted("provider reconciliations need the finance role")

    async def reconcile(
        self,
        db: Database,
        *,
        provider_id: str,
        period: str,
        statement: AsyncIterable[bytes],
        actor: str,
        reason: str | None = None,
        batch_lines: int = BATCH_LINES,
    ) -> ReconciliationReport:
        """Stream ``statement`` (the CSV body) in, compare it with the ledger, store and return the outcome.

        Raises ``ProviderNotFound``, ``InvalidPeriod``, ``InvalidStatement`` (naming the line),
        ``DuplicateRequestId`` and ``StatementTooLarge``; nothing is kept then.
        """
        check_period(period)
        reason = _check_reason(reason)
        now = utcnow()
        async with db.session_scope() as session:
            await provider_service.get(session, provider_id)
            stale = await reconciliation_repository.stale_loading(session, started_before=now - STALE_LOADING_AFTER)
            await reconciliation_repository.discard(session, stale)
            reconciliation = await reconciliation_repository.start(
                session, provider_id=provider_id, period=period, actor=actor, reason=reason, now=now
            )
        reconciliation_id = reconciliation.id
        try:
            tally = StatementTally()
            await self._load(db, reconciliation_id, read_statement(statement, tally=tally, batch_lines=batch_lines))
            async with db.session_scope() as session:
                report = await self._compare(session, reconciliation_id, tally)
        except BaseException:
            await self._discard(db, reconciliation_id)
            raise
        done = report.reconciliation
        log.info(
            "reconciliation %s of %s %s by %s: %s lines, %s matched, %s amount mismatches, %s only at the provider, "
            "%s only in the ledger",
            done.id,
            done.provider_id,
            done.period,
            done.created_by,
            done.lines,
            done.matched,
            done.amount_mismatch_count,
            done.only_provider_count,
            done.only_ledger_count,
        )
        return report

    async def _load(self, db: Database, reconciliation_id: int, batches: AsyncIterator[list[StatementLine]]) -> None:
        """Stage every batch; the next batch is parsed while the last one is written (at most two are held)."""
        queue: asyncio.Queue[list[StatementLine] | BaseException | None] = asyncio.Queue(maxsize=1)

        async def parse() -> None:
            try:
                async for batch in batches:
                    await queue.put(batch)
            except Exception as exc:  # noqa: BLE001 - handed to the writer below, which raises it
                await queue.put(exc)
                return
            await queue.put(None)

        parser = asyncio.create_task(parse())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                await self._stage(db, reconciliation_id, item)
        finally:
            if not parser.done():
                parser.cancel()
            await asyncio.gather(parser, return_exceptions=True)

    async def _stage(self, db: Database, reconciliation_id: int, batch: list[StatementLine]) -> None:
        try:
            async with db.session_scope() as session:
                await reconciliation_repository.stage_lines(session, reconciliation_id, batch)
        except StagedTwice:
            duplicate = await self._find_duplicate(db, reconciliation_id, batch)
            if duplicate is None:
                raise
            raise duplicate from None

    async def _find_duplicate(
        self, db: Database, reconciliation_id: int, batch: list[StatementLine]
    ) -> DuplicateRequestId | None:
        """The first line of ``batch`` whose request id an earlier line stated (earlier batches are staged)."""
        async with db.session_scope() as session:
            staged = await reconciliation_repository.staged_lines_of(
                session, reconciliation_id, [request_id for request_id, _, _ in batch]
            )
        seen: dict[str, int] = {}
        for request_id, _, line in batch:
            first = staged.get(request_id, seen.get(request_id))
            if first is not None:
                return DuplicateRequestId(request_id, line=line, first_line=first)
            seen[request_id] = line
        return None

    async def _compare(
        self, session: AsyncSession, reconciliation_id: int, tally: StatementTally
    ) -> ReconciliationReport:
        reconciliation = await reconciliation_repository.get(session, reconciliation_id)
        if reconciliation is None:
            raise RuntimeError(f"reconciliation {reconciliation_id} was discarded while its statement was loading")
        provider_id, period = reconciliation.provider_id, reconciliation.period
        await reconciliation_repository.analyze_staged(session)
        await reconciliation_repository.store_discrepancies(
            session, reconciliation_id=reconciliation_id, provider_id=provider_id, period=period
        )
        counts = await reconciliation_repository.discrepancy_counts(session, reconciliation_id)
        ledger_requests, ledger_total = await reconciliation_repository.ledger_side_totals(
            session, provider_id=provider_id, period=period
        )
        mismatched, only_provider, only_ledger = (
            counts.get(kind, 0) for kind in (AMOUNT_MISMATCH, ONLY_PROVIDER, ONLY_LEDGER)
        )
        matched = tally.lines - mismatched - only_provider
        if matched < 0 or matched != ledger_requests - mismatched - only_ledger:
            raise RuntimeError(
                f"reconciliation {reconciliation_id}: the statement's {tally.lines} lines and the ledger's "
                f"{ledger_requests} requests do not add up to the same {matched} matched"
            )
        reconciliation.supersedes_id = await reconciliation_repository.latest_complete_id(
            session, provider_id=provider_id, period=period
        )
        reconciliation.status = "complete"
        reconciliation.lines = tally.lines
        reconciliation.matched = matched
        reconciliation.amount_mismatch_count = mismatched
        reconciliation.only_provider_count = only_provider
        reconciliation.only_ledger_count = only_ledger
        reconciliation.provider_total_nano_usd = tally.total_nano_usd
        reconciliation.ledger_total_nano_usd = ledger_total
        reconciliation.completed_at = utcnow()
        await session.flush()
        await reconciliation_repository.drop_staged_lines(session, reconciliation_id)
        lists = {
            kind: [
                Discrepancy(request_id, ledger, provider)
                for request_id, ledger, provider in await reconciliation_repository.discrepancies(
                    session, reconciliation_id=reconciliation_id, kind=kind, limit=LIST_LIMIT
                )
            ]
            for kind in (AMOUNT_MISMATCH, ONLY_PROVIDER, ONLY_LEDGER)
        }
        return ReconciliationReport(reconciliation, lists[AMOUNT_MISMATCH], lists[ONLY_PROVIDER], lists[ONLY_LEDGER])

    async def _discard(self, db: Database, reconciliation_id: int) -> None:
        """Remove a failed upload's reconciliation and staged lines; if even that fails, a later upload sweeps them."""
        try:
            async with db.session_scope() as session:
                await reconciliation_repository.discard(session, [reconciliation_id])
        except Exception:
            log.exception(
                "could not discard loading reconciliation %s; it is swept after %s",
                reconciliation_id,
                STALE_LOADING_AFTER,
            )

    async def list_reconciliations(
        self, session: AsyncSession, *, period: str, provider_id: str | None = None, limit: int = 100
    ) -> list[Reconciliation]:
        """A period's complete reconciliations (summaries), by provider and newest first."""
        check_period(period)
        return await reconciliation_repository.list_complete(
            session, period=period, provider_id=provider_id, limit=limit
        )


reconciliation_service = ReconciliationService()
