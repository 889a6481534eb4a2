"""``metering archive --before YYYY-MM --out DIR``: closed months to Parquet, checked, then dropped, with a progress bar.

The database, the archive service and rich load in the command's body, so ``metering`` lists this command
without paying for them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.params import check_period

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from metering.archive.service import ArchiveResult


class _Bar:
    """The archive's progress (``metering.archive.service.ArchiveProgress``) as one rich task at a time."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, description: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(description, total=total)

    def advance(self, rows: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, rows)


async def _archive(database_url: str, before: str, out: Path, *, show_progress: bool) -> ArchiveResult:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from metering.archive.service import archive_service
    from metering.config import get_settings
    from metering.db import Database

    database = Database(database_url, pool_size=2, statement_timeout_ms=get_settings().export_statement_timeout_ms)
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show_progress,
        ) as progress:
            return await archive_service.archive(database, before=before, out=out, progress=_Bar(progress))
    finally:
        await database.dispose()


def archive(
    before: str = typer.Option(..., help="YYYY-MM: archive the closed months before this one.", callback=check_period),
    out: Path = typer.Option(
        ..., "--out", help="Directory of the Parquet files (one folder per month).", file_okay=False
    ),
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Write every closed month before --before to Parquet, check the files, then drop the month's rows (PostgreSQL)."""
    from rich.console import Console

    from metering.config import get_settings
    from metering.migrate import upgrade_on_open_sync  # Alembic is slow to import

    settings = get_settings()
    upgrade_on_open_sync(settings)
    result = asyncio.run(_archive(settings.database_url, before, out, show_progress=progress))
    console = Console(stderr=True)
    for period in result.archived:
        console.print(f"[green]{period}[/green] archived: {result.rows[period]} rows in {out / period}")
    if result.already:
        console.print(f"already archived: {', '.join(result.already)}")
    if result.stopped_at is not None:
        period, reason = result.stopped_at
        console.print(f"[yellow]{period} not archived[/yellow]: {reason}; later months wait for it")
    if not result.archived and not result.already and result.stopped_at is None:
        console.print(f"no closed month before {before} to archive")
