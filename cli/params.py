"""Checks of option values shared by several commands, so a bad value is a usage error (exit 2) before any work."""

from __future__ import annotations

import typer

from metering.periods import parse_period

MAX_PORT = 65535


def check_port(value: int) -> int:
    """A ``--port`` callback: 0 would make the OS pick a port nobody is told about, above 65535 none exists."""
    if not 1 <= value <= MAX_PORT:
        raise typer.BadParameter(f"must be a TCP port from 1 to {MAX_PORT}, got {value}")
    return value


def check_port_or_off(value: int) -> int:
    """``check_port``, with 0 meaning that the server is off."""
    return value if value == 0 else check_port(value)


def check_period(value: str | None) -> str | None:
    """A ``--period`` callback: ``YYYY-MM`` as ``metering.periods`` accepts it, worded for people."""
    if value is None:
        return None
    try:
        return parse_period(value)
    except ValueError:
        raise typer.BadParameter(f"must be YYYY-MM with month 01-12 (year 1000-9998), got {value!r}") from None
