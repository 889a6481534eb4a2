"""Finance exports (SPEC §8): a report of one period, streamed as CSV, JSON Lines or Parquet.

Unlike other services this one takes the ``Database``, not a session: on SQLite a long
report is read in several short transactions (see ``metering.exports.repository``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from metering.db import Database
from metering.errors import InvalidInput
from metering.exports.copy_repository import copy_query, copy_repository, supports_copy
from metering.exports.copy_writers import write_csv_from_copy, write_parquet_from_copy
from metering.exports.reports import FORMATS, Report, check_format, get_report
from metering.exports.repository import export_reads, export_repository
from metering.exports.writers import WRITERS
from metering.periods import parse_period

# Formats PostgreSQL streams through COPY; JSON Lines keeps the row path.
COPY_FORMATS = ("csv", "parquet")


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
        if export_reads(db).supports_copy and fmt in COPY_FORMATS and supports_copy(spec.name):
            async for chunk in self._stream_copy(db, spec=spec, period=period, fmt=fmt, on_rows=on_rows):
                yield chunk
            return

        async def batches() -> AsyncIterator[list[tuple[Any, ...]]]:
            async for batch in export_repository.batches(db, report=spec.name, period=period):
                if on_rows is not None:
                    on_rows(len(batch))
                yield batch

        async for chunk in WRITERS[fmt](spec.columns, batches()):
            if chunk:
                yield chunk

    async def _stream_copy(
        self, db: Database, *, spec: Report, period: str, fmt: str, on_rows: Callable[[int], None] | None
    ) -> AsyncIterator[bytes]:
        """PostgreSQL formats the rows (COPY); Python only mends line ends (CSV) or hands blocks to Arrow."""
        shape = "csv" if fmt == "csv" else "arrow"
        query = copy_query(spec.name, period, spec.columns, shape=shape)
        chunks = copy_repository.copy_chunks(db, query=query, header=fmt == "csv")
        if fmt == "csv":
            writer = write_csv_from_copy(chunks, on_rows=on_rows)
        else:
            writer = write_parquet_from_copy(spec.columns, chunks, on_rows=on_rows)
        async for chunk in writer:
            if chunk:
                yield chunk


export_service = ExportService()
