"""How each engine can read a report for export: through COPY, and in one snapshot or in short transactions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metering.exports.repository import ExportReads


class SqliteExportReads:
    """Every transaction holds the one writer lock, so a long cursor would stop ingest for the whole export."""

    supports_copy = False
    pages_row_reports = True


class PostgresExportReads:
    """A report is one snapshot: the server's COPY, or one server-side cursor."""

    supports_copy = True
    pages_row_reports = False


sqlite_export_reads: ExportReads = SqliteExportReads()
postgres_export_reads: ExportReads = PostgresExportReads()
