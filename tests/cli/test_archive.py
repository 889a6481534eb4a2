"""``metering archive`` on the command line: its options checked before any work, SQLite refused in one line.

The archive itself, on PostgreSQL, is tested in ``tests/metering/archive`` (in-process, and killed at each step).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from metering.config import Settings


def test_a_bad_month_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["archive", "--before", "2026-13", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "must be YYYY-MM" in result.output


def test_sqlite_is_refused_in_one_line(settings: Settings, tmp_path: Path) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the refusal is SQLite's")
    result = CliRunner().invoke(app, ["archive", "--before", "2026-01", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: archive needs PostgreSQL: the embedded SQLite database keeps every month in one table per concept"
    ]
