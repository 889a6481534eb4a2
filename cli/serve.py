"""``metering serve``: the API on uvicorn; the embedded default migrates and seeds sample data."""

from __future__ import annotations

import asyncio

import typer

from cli.params import check_port


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to listen on (1-65535).", callback=check_port),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
    sample_data: bool = typer.Option(True, help="Seed sample providers and accounts into an empty embedded database."),
) -> None:
    """Run the Metering API."""
    # uvicorn, Alembic and the sample data load here: other commands should not pay for them at start-up.
    import uvicorn
    from rich.console import Console

    from metering.config import EMBEDDED_DEV_TOKEN, get_settings
    from metering.migrate import upgrade_sync
    from metering.sample_data import seed_sample_data

    settings = get_settings()
    console = Console(stderr=True)
    if settings.is_sqlite:
        upgrade_sync(settings.database_url)
        if sample_data and settings.environment == "embedded":
            seeded = asyncio.run(seed_sample_data(settings.database_url))
            if seeded:
                console.print("[cyan]sample data seeded[/cyan]: providers and accounts for a first look")
    if settings.service_tokens == EMBEDDED_DEV_TOKEN:
        console.print(f"[yellow]embedded mode[/yellow]: service token is {EMBEDDED_DEV_TOKEN!r}")
    console.print(f"Metering on http://{host}:{port} (docs at /docs), database {settings.database_url.split('@')[-1]}")
    # httptools and uvloop when installed (uvicorn[standard]); no access log line per request, which
    # would cost the hot path more than a trivial route; errors are still logged.
    uvicorn.run(
        "api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning",
        http="auto", loop="auto", access_log=False,
    )
