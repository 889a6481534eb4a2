"""Finance exports (SPEC §8): a report of one period, streamed as CSV, JSON Lines or Parquet.

Unlike other services this one takes the ``Database``, not a session: on SQLite a long
report is read in several short transactions (see ``metering.exports.repository``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from metering.db import Database
from metering.errors import InvalidInput
from metering.exports.reports import FORMATS, Report, check_format, get_report
from metering.exports.repository import export_repository
from metering.exports.writers import WRITERS
from metering.periods import parse_period


class ExportService:
    def prepare(self, *, report: str, period: str, fmt: str) -> tuple[Report, str, str]:
        """Validate names before anything is streamed; returns (report, media type, file name)."""
        spec = get_report(report)
        check_format(fmt)
        try:
            parse_period(period)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        return spec, FORMATS[fmt], f"{spec.name}-{period}.{fmt}"

    async def count_rows(self, db: Database, *, report: str, period: str) -> int:
        return await export_repository.count_rows(db, report=get_report(report).name, period=period)

    async def stream_report(
        self,
        db: Database,
        *,
        report: str,
        period: str,
        fmt: str,
        on_rows: Callable[[int], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """The report's bytes in order; ``on_rows`` hears how many rows each batch held (progress)."""
        spec, _, _ = self.prepare(report=report, period=period, fmt=fmt)

        async def batches() -> AsyncIterator[list[tuple]]:
            async for batch in export_repository.batches(db, report=spec.name, period=period):
                if on_rows is not None:
                    on_rows(len(batch))
                yield batch

        async for chunk in WRITERS[fmt](spec.columns, batches()):
            if chunk:
                yield chunk


export_service = ExportService()
