"""``metering serve``: the API on uvicorn; the embedded default migrates and seeds sample data."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import typer

from cli.params import check_port

if TYPE_CHECKING:
    from rich.console import Console

    from metering.config import Settings


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
    from metering.migrate import upgrade_on_open_sync
    from metering.sample_data import seed_sample_data

    settings = get_settings()
    console = Console(stderr=True)
    upgrade_on_open_sync(settings)
    if sample_data and settings.environment == "embedded" and settings.migrates_on_open:
        seeded = asyncio.run(seed_sample_data(settings.database_url))
        if seeded:
            console.print("[cyan]sample data seeded[/cyan]: providers and accounts for a first look")
    if settings.service_tokens == EMBEDDED_DEV_TOKEN:
        console.print(f"[yellow]embedded mode[/yellow]: service token is {EMBEDDED_DEV_TOKEN!r}")
    console.print(f"Metering on http://{host}:{port} (docs at /docs), database {settings.database_url.split('@')[-1]}")
    if not settings.migrates_on_open:
        console.print(connection_budget(workers, settings.database_pool_size, pgbouncer=settings.database_pgbouncer))
    if settings.environment == "embedded":
        print_token_hint(console, settings, f"http://{_reachable(host)}:{port}")
    # httptools and uvloop when installed (uvicorn[standard]); no access log line per request, which
    # would cost the hot path more than a trivial route; errors are still logged.
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        http="auto",
        loop="auto",
        access_log=False,
    )


def connection_budget(workers: int, pool_size: int, *, pgbouncer: bool) -> str:
    """What the API's processes may open to PostgreSQL: per process, the engine's pool and as many again
    under load, and authorize's own connections (``metering.hot_path.pg_connections``), each ``pool_size``."""
    each = 3 * pool_size
    to = "PgBouncer (transaction mode)" if pgbouncer else "PostgreSQL"
    return (
        f"{workers} worker process(es), each with its own pools: at most {each} connections to {to} per process, "
        f"{workers * each} in all (METERING_DATABASE_POOL_SIZE={pool_size})"
    )


# Who the hint's token is for: a sample account (an admin of the sample org), and a user of the demo.
HINT_USER = "alice"


def _reachable(host: str) -> str:
    """The address to print for a bound interface: a wildcard is reached through loopback."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def print_token_hint(console: Console, settings: Settings, url: str) -> None:
    """How to call the user-facing routes: a ready billing-page link, and the command that makes tokens."""
    from cli.token import DEFAULT_MINUTES, signing_refusal
    from metering.auth.tokens import sign_token

    if signing_refusal(settings) is not None:
        console.print("user routes need a JWT signed by the platform (RS256; METERING_JWT_PUBLIC_KEY)")
        return
    link = f"{url}/billing/{HINT_USER}?token={sign_token(settings, HINT_USER, ttl_seconds=DEFAULT_MINUTES * 60)}"
    console.print(
        f"user routes need a token: [bold]metering token {HINT_USER}[/bold] (--role finance for exports), e.g.",
        highlight=False,
    )
    # Commands and links are soft-wrapped: the terminal may fold them, but a copy stays one line.
    console.print(
        f'  curl -H "Authorization: Bearer $(metering token {HINT_USER})" {url}/v1/accounts/{HINT_USER}/billing',
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    console.print(f"billing page of {HINT_USER}, valid {DEFAULT_MINUTES} minutes:", highlight=False)
    console.print(f"  {link}", highlight=False, markup=False, soft_wrap=True)
