"""``metering verify``: check the ledger's invariants and print a report; non-zero exit on any breach."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from metering.ledger.verify import VerifyReport


def verify() -> None:
    """Check every ledger invariant (SPEC §7); exit 1 when money does not add up."""
    # Imported here: ``metering`` lists this command without loading the database or Alembic.
    from rich.console import Console

    from metering.config import get_settings
    from metering.migrate import upgrade_on_open_sync

    settings = get_settings()
    upgrade_on_open_sync(settings)
    report = asyncio.run(_verify(settings.database_url))
    print_report(report, Console())
    raise typer.Exit(0 if report.ok else 1)


async def _verify(database_url: str) -> VerifyReport:
    from metering.config import get_settings
    from metering.db import Database
    from metering.ledger.verify import verify as run_verify

    database = Database(database_url, pool_size=1, statement_timeout_ms=get_settings().export_statement_timeout_ms)
    try:
        return await run_verify(database)
    finally:
        await database.dispose()


def print_report(report: VerifyReport, console: Console) -> None:
    """The checks as a table that fits the terminal, then every breach and warning line."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="metering verify", show_lines=False)
    # On a narrow terminal the prose wraps first (rich narrows the widest column first); a check name
    # or a result pressed further is folded, never cut short with an ellipsis.
    table.add_column("check", overflow="fold")
    table.add_column("invariant")
    table.add_column("result", overflow="fold")
    for check in report.checks:
        if not check.ok:
            result = f"[bold red]BREACH ×{check.breach_count}[/bold red]"
        elif check.warning_count:
            result = f"[yellow]ok, {check.warning_count} warning(s)[/yellow]"
        else:
            result = "[green]ok[/green]"
        table.add_row(check.name, check.description, result)
    console.print(table)
    for check in report.checks:
        for line in check.breaches:
            console.print(f"[red]BREACH[/red] {check.name}: {escape(line)}", highlight=False)
        if check.breach_count > len(check.breaches):
            console.print(f"[red]BREACH[/red] {check.name}: … {check.breach_count - len(check.breaches)} more")
        for line in check.warnings:
            console.print(f"[yellow]warning[/yellow] {check.name}: {escape(line)}", highlight=False)
        if check.warning_count > len(check.warnings):
            console.print(f"[yellow]warning[/yellow] {check.name}: … {check.warning_count - len(check.warnings)} more")
    if report.ok:
        console.print(f"[bold green]ledger OK[/bold green] ({report.warning_count} warning(s))")
    else:
        console.print(f"[bold red]ledger BREACHED[/bold red]: {report.breach_count} breach(es)")
