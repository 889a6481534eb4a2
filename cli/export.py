"""``metering export REPORT --period YYYY-MM --format csv|jsonl|parquet --out FILE``, with a progress bar.

Only the report names and their checks are imported at the top: the database, the export service and rich
load in the command's body, so ``metering`` lists this command without paying for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import typer

from cli.errors import CommandFailed
from cli.params import check_period
from metering.errors import InvalidInput
from metering.exports.reports import FORMATS, REPORTS, check_format, get_report


async def _export(database_url: str, report: str, period: str, fmt: str, out: Path, *, show_progress: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from metering.config import get_settings
    from metering.db import Database
    from metering.exports.service import export_service
    from metering.hot_path.collector import loaded_objects_out_of_the_collector

    # Opened first: an unwritable path fails at once, not after the database counted the rows.
    partial = out.with_name(out.name + ".partial")
    try:
        handle = partial.open("wb")
    except OSError as exc:
        raise CommandFailed(f"cannot write {out}: {exc.strerror or exc}") from exc
    # Every buffer an export passes on allocates young objects (futures, queue entries): full
    # collections came often enough to spend a noticeable part of the export walking the
    # libraries' objects.
    loaded_objects_out_of_the_collector()
    rows_written = 0
    database = None
    try:
        with handle:
            database = Database(
                database_url, pool_size=2, statement_timeout_ms=get_settings().export_statement_timeout_ms
            )
            # Counting is a second pass over the report: only worth it when a bar shows the total.
            total = await export_service.count_rows(database, report=report, period=period) if show_progress else None
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

                async for chunk in export_service.stream_report(
                    database, report=report, period=period, fmt=fmt, on_rows=advance
                ):
                    handle.write(chunk)
        # A reader never sees half a file: the export appears under its name only when complete.
        partial.replace(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if database is not None:
            await database.dispose()
    return rows_written


def _known(check: Callable[[str], object]) -> Callable[[str], str]:
    """An option callback from a ``metering.exports.reports`` check: an unknown name is a usage error."""

    def callback(value: str) -> str:
        try:
            check(value)
        except InvalidInput as exc:
            raise typer.BadParameter(exc.detail) from exc
        return value

    return callback


def export(
    report: str = typer.Argument(..., help=f"One of: {', '.join(REPORTS)}.", callback=_known(get_report)),
    period: str | None = typer.Option(None, help="YYYY-MM; default the current period.", callback=check_period),
    format: str = typer.Option(  # noqa: A002
        "csv", "--format", help=f"One of: {', '.join(FORMATS)}.", callback=_known(check_format)
    ),
    out: Path = typer.Option(..., "--out", help="File to write.", dir_okay=False),
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Write a finance report of one period to a file (streamed in constant memory)."""
    from rich.console import Console

    from metering.config import get_settings
    from metering.periods import current_period

    settings = get_settings()
    period = period or current_period()
    from metering.migrate import upgrade_on_open_sync  # Alembic is slow to import

    upgrade_on_open_sync(settings)
    rows = asyncio.run(_export(settings.database_url, report, period, format, out, show_progress=progress))
    Console(stderr=True).print(f"[green]{rows} rows[/green] of {report} {period} written to {out}")
