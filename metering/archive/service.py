"""``metering archive``: closed months written to Parquet, checked against the database, then dropped from it.

A multi-transaction entry point: a month's rows are read, recorded and dropped in transactions
of their own, in an order that a kill at any step (``kill -9`` included) leaves nothing lost and
a rerun finishes:

1. files: each table's rows of the month go to ``<out>/<YYYY-MM>/<table>.parquet``, written under
   a temporary name, flushed to disk and renamed (``metering.archive.files``);
2. check: each file is read back from disk; its rows and sums must equal the database's;
3. manifest: ``manifest.json`` (rows, sums, sha256 per file), written the same way, last;
4. record: one transaction writes ``archived_periods`` and the sums ``metering verify`` checks
   from then on (``archived_ledger_sums``, ``archived_account_sums``): before it commits the
   month is live and a rerun starts it over from 1; after, verify no longer reads its rows;
5. drop: the month's partitions are detached and dropped, its other rows deleted, then
   ``dropped_at`` is set; a rerun resumes this step for a month recorded but not dropped.

A month goes only when nothing can change it any more: it counts as closed, no request of it
is pending and no hold of it held, and it ended more than ``max_record_age_days`` ago, so no
usage record of it can be accepted again (ingest refuses older ones): its request keys go too.
The archive starts with ``metering verify`` and archives nothing from a ledger that does not
add up, so the sums it records are the ones verify agreed with.

PostgreSQL only. SQLite, the embedded default, keeps every month in one table per concept; it
is refused with one line rather than thinned row by row (decided: an embedded database holds
little, and deleting its rows in place would give back no disk without a VACUUM that stops
everything).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError

from metering.archive.errors import ArchiveMismatch, ArchiveRefused
from metering.archive.files import Figures, read_figures, sha256_of, write_manifest, write_parquet
from metering.archive.repository import ARCHIVED_TABLES, ArchivedTable, archive_repository
from metering.config import get_settings
from metering.db import Database
from metering.ledger.verify import verify_session
from metering.periods import period_bounds, utcnow

logger = logging.getLogger(__name__)

# For tests only: ``METERING_ARCHIVE_KILL_AT=<step>`` (or ``<step>:<YYYY-MM>``) makes the process kill
# itself with SIGKILL on reaching that step, the way an operator's ``kill -9`` or a crash would.
KILL_AT_VARIABLE = "METERING_ARCHIVE_KILL_AT"
STEPS = ("writing", "file", "manifest", "recorded", "partition", "deleted")
# A partition is dropped under a short lock timeout (it locks the parent table); tried this many times.
DROP_ATTEMPTS = 5
DROP_RETRY_SECONDS = 1.0


class ArchiveProgress(Protocol):
    """Where the archive reports its work (the command line draws it as a progress bar)."""

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, rows: int) -> None: ...


class _Silent:
    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


@dataclass
class ArchiveResult:
    archived: list[str] = field(default_factory=list)
    # Months archived by an earlier run (and finished now, when that run was interrupted).
    already: list[str] = field(default_factory=list)
    # The first month that could not go yet, and why; later months wait for it.
    stopped_at: tuple[str, str] | None = None
    rows: dict[str, int] = field(default_factory=dict)


def _checkpoint(step: str, period: str) -> None:
    """Die here, as under ``kill -9``, when the test's variable names this step (see ``KILL_AT_VARIABLE``)."""
    target = os.environ.get(KILL_AT_VARIABLE)
    if target and target in (step, f"{step}:{period}"):
        os.kill(os.getpid(), signal.SIGKILL)


class ArchiveService:
    async def archive(
        self, database: Database, *, before: str, out: Path, progress: ArchiveProgress | None = None
    ) -> ArchiveResult:
        """Archive every closed month before ``before`` into ``out``, in order; see the module docstring."""
        database.by_dialect(sqlite=_refuse_sqlite, postgresql=_accept)()
        progress = progress or _Silent()
        result = ArchiveResult()
        async with database.session_scope() as session:
            months = await archive_repository.closed_months(session, before=before)
            archived = await archive_repository.archived(session)
        for period in [m for m in months if m in archived and archived[m].dropped_at is not None]:
            result.already.append(period)
        verified = False
        for period in [m for m in months if m not in archived or archived[m].dropped_at is None]:
            if period in archived:
                # Recorded by a run that was interrupted while dropping: its files are complete and checked.
                await self._drop(database, period, progress)
                result.already.append(period)
                continue
            refusal = await self._refusal(database, period)
            if refusal is not None:
                result.stopped_at = (period, refusal)
                break
            if not verified:
                await self._verify_first(database, progress)
                verified = True
            result.rows[period] = await self._archive_month(database, period, out / period, progress)
            result.archived.append(period)
        return result

    async def _verify_first(self, database: Database, progress: ArchiveProgress) -> None:
        progress.start("verify", None)
        async with database.session_scope() as session:
            report = await verify_session(session)
        if not report.ok:
            raise ArchiveRefused(
                f"metering verify finds {report.breach_count} breach(es): nothing is archived from a ledger that "
                "does not add up"
            )

    async def _refusal(self, database: Database, period: str) -> str | None:
        """Why ``period`` cannot go yet, or None."""
        _, end = period_bounds(period)
        settings = get_settings()
        last_record = end + timedelta(days=settings.max_record_age_days)
        if utcnow() < last_record:
            return f"records of {period} are accepted until {last_record:%Y-%m-%d %H:%M} UTC"
        async with database.session_scope() as session:
            pending = await archive_repository.pending_requests(session, period=period)
            held = await archive_repository.held_holds(session, period=period)
        if pending:
            return f"{pending} request(s) of {period} still wait for their cost"
        if held:
            return f"{held} hold(s) of {period} are still held"
        return None

    async def _archive_month(self, database: Database, period: str, directory: Path, progress: ArchiveProgress) -> int:
        directory.mkdir(parents=True, exist_ok=True)
        tables: dict[str, Any] = {}
        for archived in ARCHIVED_TABLES:
            tables[archived.name] = await self._write_and_check(database, archived, period, directory, progress)
        _checkpoint("file", period)
        manifest_sha256 = write_manifest(directory, {"period": period, "tables": tables})
        _checkpoint("manifest", period)
        async with database.session_scope() as session:
            await archive_repository.record(
                session,
                period=period,
                location=str(directory.resolve()),
                manifest_sha256=manifest_sha256,
                tables=tables,
                now=utcnow(),
            )
        _checkpoint("recorded", period)
        await self._drop(database, period, progress)
        return sum(int(figures["rows"]) for figures in tables.values())

    async def _write_and_check(
        self, database: Database, archived: ArchivedTable, period: str, directory: Path, progress: ArchiveProgress
    ) -> dict[str, Any]:
        """One table's file of the month, read back and held to the database's figures."""
        path = directory / f"{archived.name}.parquet"
        async with database.session_scope() as session:
            expected = await archive_repository.figures(session, archived, period=period)
            progress.start(f"{period} {archived.name}", expected.rows)

            async def batches() -> AsyncIterator[Sequence[Sequence[Any]]]:
                first = True
                async for batch in archive_repository.stream_rows(session, archived.table, period=period):
                    yield batch
                    if first:
                        _checkpoint("writing", period)
                        first = False

            await write_parquet(path, archived.table, batches(), on_rows=progress.advance)
        written = read_figures(path, archived.sums)
        if written != expected:
            raise ArchiveMismatch(
                f"{path} holds {_describe(written)} but the database {_describe(expected)}: {period} is not dropped"
            )
        return {"file": path.name, "rows": written.rows, "sums": written.sums, "sha256": sha256_of(path)}

    async def _drop(self, database: Database, period: str, progress: ArchiveProgress) -> None:
        """Step 5: the month's rows out of the database, each statement its own transaction; idempotent."""
        progress.start(f"{period} drop", None)
        for archived in ARCHIVED_TABLES:
            if archived.partitioned:
                await self._drop_partition(database, archived.name, period)
                _checkpoint("partition", period)
            async with database.session_scope() as session:
                # Partitioned: the month's rows DEFAULT may hold. Otherwise: all of them.
                await archive_repository.delete_month(session, table=archived.table, period=period)
        async with database.session_scope() as session:
            await archive_repository.delete_request_keys(session, period=period)
        _checkpoint("deleted", period)
        async with database.session_scope() as session:
            await archive_repository.mark_dropped(session, period=period, now=utcnow())

    async def _drop_partition(self, database: Database, table: str, period: str) -> None:
        for attempt in range(1, DROP_ATTEMPTS + 1):
            try:
                async with database.session_scope() as session:
                    await archive_repository.drop_partition(session, table=table, period=period)
                return
            except DBAPIError as error:
                # A lock not granted within the timeout: the hot path goes first; try again shortly.
                if attempt == DROP_ATTEMPTS or getattr(error.orig, "sqlstate", None) != "55P03":
                    raise
                logger.warning("dropping %s of %s waits for a lock (attempt %d)", table, period, attempt)
                await asyncio.sleep(DROP_RETRY_SECONDS * attempt)


def _describe(figures: Figures) -> str:
    sums = ", ".join(f"{name} {value}" for name, value in sorted(figures.sums.items()))
    return f"{figures.rows} rows" + (f" ({sums})" if sums else "")


def _refuse_sqlite() -> None:
    raise ArchiveRefused(
        "archive needs PostgreSQL: the embedded SQLite database keeps every month in one table per concept"
    )


def _accept() -> None:
    return None


archive_service = ArchiveService()
