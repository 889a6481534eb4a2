"""``metering export REPORT --period YYYY-MM --format csv|jsonl|parquet --out FILE``, with a progress bar.

Only the report names are imported at the top: the database, the export service and rich
load in the command's body, so ``metering`` lists this command without paying for them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from metering.exports.reports import FORMATS, REPORTS


async def _export(database_url: str, report: str, period: str, fmt: str, out: Path, *, show_progress: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from metering.db import Database
    from metering.exports.service import export_service
    from metering.startup import loaded_objects_out_of_the_collector

    # Every buffer an export passes on allocates young objects (futures, queue entries): full
    # collections came often enough to walk the libraries' objects for a tenth of the time
    # (1M-row Parquet export, two paired runs: 3.80 s against 4.36 s, 5.05 s against 5.52 s).
    loaded_objects_out_of_the_collector()
    database = Database(database_url, pool_size=2)
    rows_written = 0
    try:
        # Counting is a second pass over the report: only worth it when a bar shows the total.
        total = await export_service.count_rows(database, report=report, period=period) if show_progress else None
        partial = out.with_name(out.name + ".partial")
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show_progress,
        ) as progress:
            task = progress.add_task(f"{report} {period}", total=total)

            def advance(rows: int) -> None:
                nonlocal rows_written
                rows_written += rows
                progress.advance(task, rows)

            with partial.open("wb") as handle:
                async for chunk in export_service.stream_report(
                    database, report=report, period=period, fmt=fmt, on_rows=advance
                ):
                    handle.write(chunk)
        # A reader never sees half a file: the export appears under its name only when complete.
        partial.replace(out)
    finally:
        await database.dispose()
    return rows_written


def export(
    report: str = typer.Argument(..., help=f"One of: {', '.join(REPORTS)}."),
    period: str = typer.Option(None, help="YYYY-MM; default the current period."),
    format: str = typer.Option("csv", "--format", help=f"One of: {', '.join(FORMATS)}."),  # noqa: A002
    out: Path = typer.Option(..., "--out", help="File to write."),
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Write a finance report of one period to a file (streamed in constant memory)."""
    from rich.console import Console

    from metering.config import get_settings
    from metering.exports.service import export_service
    from metering.periods import current_period

    settings = get_settings()
    console = Console(stderr=True)
    period = period or current_period()
    try:
        export_service.prepare(report=report, period=period, fmt=format)
    except Exception as exc:  # noqa: BLE001 - shown to the operator, exit code 2
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if settings.is_sqlite:
        from metering.migrate import upgrade_sync  # Alembic is slow to import; PostgreSQL is migrated explicitly

        upgrade_sync(settings.database_url)
    rows = asyncio.run(_export(settings.database_url, report, period, format, out, show_progress=progress))
    console.print(f"[green]{rows} rows[/green] of {report} {period} written to {out}")
