"""``metering db upgrade``: apply the Alembic migrations to the configured database."""

from __future__ import annotations

import typer

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Upgrade the schema (explicit on PostgreSQL; automatic for the embedded SQLite file)."""
    from rich.console import Console

    from metering.config import get_settings
    from metering.migrate import upgrade_sync  # Alembic is slow to import; only this command needs it

    settings = get_settings()
    upgrade_sync(settings.database_url, revision)
    Console(stderr=True).print(f"[green]schema at {revision}[/green] on {settings.database_url.split('@')[-1]}")
