"""The ``metering`` command line: every command listed as before, each module loaded only when its command runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cli.main import COMMANDS, app

ROOT = Path(__file__).resolve().parents[2]
# What a command that does not need them should never pay for at start-up.
HEAVY = ("sqlalchemy", "pyarrow", "alembic", "uvicorn", "apscheduler", "fastapi", "prometheus_client")


def _run(code: str) -> str:
    """The last line ``code`` wrote to stderr, run in a fresh interpreter (help goes to stdout)."""
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.strip().splitlines()[-1]


def _loaded_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter has imported once ``code`` ran."""
    report = f"print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    return [name for name in _run(f"{code}\n{report}").removeprefix("loaded:").split(",") if name]


class TestStartUp:
    def test_importing_the_command_line_loads_no_heavy_dependency(self) -> None:
        assert _loaded_after("import cli.main") == []

    def test_the_export_help_loads_no_heavy_dependency(self) -> None:
        code = "from cli.main import app\ntry:\n    app(['export', '--help'])\nexcept SystemExit:\n    pass"
        assert _loaded_after(code) == []

    def test_a_command_loads_only_its_own_module(self) -> None:
        code = (
            "from cli.main import app\ntry:\n    app(['db', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('cli.')), file=sys.stderr)"
        )
        assert _run(code) == "['cli.db', 'cli.errors', 'cli.main']"  # cli.errors words the failures of every command


class TestCommands:
    def test_the_help_lists_every_command_in_order(self) -> None:
        result = CliRunner().invoke(app, ["--help"])
        assert result.exit_code == 0, result.output
        listed = [
            line.split()[1]
            for line in result.output.splitlines()
            if line.startswith("│ ") and line.split()[1] in COMMANDS
        ]
        assert listed == ["serve", "export", "verify", "archive", "token", "simulate-provider", "demo", "db", "jobs"]
        assert "Metering: billing and usage metering for an inference router." in result.output

    def test_group_commands_keep_their_sub_commands(self) -> None:
        jobs = CliRunner().invoke(app, ["jobs", "--help"])
        db = CliRunner().invoke(app, ["db", "--help"])
        assert "run-once" in jobs.output and "--only" in jobs.output
        assert "upgrade" in db.output

    def test_a_typo_is_refused_with_a_suggestion(self) -> None:
        result = CliRunner().invoke(app, ["exprt"])
        assert result.exit_code == 2
        assert "No such command 'exprt'. Did you mean 'export'?" in result.output

    def test_an_unknown_report_exits_2(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(app, ["export", "balances", "--period", "2026-10", "--out", str(tmp_path / "x")])
        assert result.exit_code == 2
        assert "unknown report 'balances'" in result.output
        assert not (tmp_path / "x").exists()
