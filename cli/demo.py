"""``metering demo``: a router, simulated providers and Metering in one process, showing a month of billing."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler


def demo(
    data_dir: Path = typer.Option(Path(".metering/demo"), help="Folder of the demo's database and spool; wiped at start."),
    serve: bool = typer.Option(True, help="Keep the servers running after the summary until Ctrl-C (--no-serve: exit)."),
    json_summary: Optional[Path] = typer.Option(None, help="Also write the summary's figures to this JSON file."),
) -> None:
    """Play a month of billing end to end on the embedded default, print the bill, then serve it."""
    from demo.run import DemoOptions, NotADemoFolder, run_demo  # imported here: other commands need not load it

    # Piped output (a log, a test) gets room for the tables instead of rich's 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 120)
    handler = RichHandler(console=console, show_path=False, show_time=False)  # the wall time would mislead
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
    try:
        asyncio.run(run_demo(DemoOptions(data_dir=data_dir, serve=serve, json_summary=json_summary), console))
    except NotADemoFolder as exc:
        raise typer.BadParameter(str(exc), param_hint="'--data-dir'") from exc
