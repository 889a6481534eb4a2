"""``metering demo``: a router, simulated providers and Metering in one process, showing a month of billing."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from demo import DEFAULT_SEED


def demo(
    data_dir: Path = typer.Option(
        Path(".metering"),
        envvar="METERING_DATA_DIR",
        file_okay=False,
        help="Folder of the demo's database and spool, the one every command reads; wiped at start (but its secrets).",
    ),
    serve: bool = typer.Option(
        True, help="Keep the servers running after the summary until Ctrl-C (--no-serve: exit)."
    ),
    json_summary: Path | None = typer.Option(None, help="Also write the summary's figures to this JSON file."),
    seed: int = typer.Option(DEFAULT_SEED, min=0, help="The providers' seed: the same seed gives the same bill."),
) -> None:
    """Play a month of billing end to end on the embedded default, print the bill, then serve it."""
    from demo.run import DemoOptions, NotADemoFolder, run_demo  # imported here: other commands need not load it

    # Piped output (a log, a test) without COLUMNS gets room for the tables instead of rich's 80 columns.
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120)
    handler = RichHandler(console=console, show_path=False, show_time=False)  # the wall time would mislead
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
    options = DemoOptions(data_dir=data_dir, serve=serve, json_summary=json_summary, seed=seed)
    try:
        asyncio.run(run_demo(options, console))
    except NotADemoFolder as exc:
        raise typer.BadParameter(str(exc), param_hint="'--data-dir'") from exc
