"""``metering verify`` on the command line: exit 0 when clean, non-zero with a clear message after tampering."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from typer.testing import CliRunner

from cli.main import app
from metering.config import Settings
from metering.db import Database
from tests.metering.ledger.test_verify import healthy_ledger


def _prepare(database_url: str, *, tamper: bool) -> None:
    async def run() -> None:
        database = Database(database_url)
        try:
            await healthy_ledger(database)
            if tamper:
                async with database.session_scope() as session:
                    await session.execute(
                        text("UPDATE ledger_entries SET amount_nano_usd = amount_nano_usd + 1 WHERE id = 2")
                    )
        finally:
            await database.dispose()

    asyncio.run(run())


class TestVerifyCommand:
    def test_clean_database_exits_zero(self, settings: Settings) -> None:
        _prepare(settings.database_url, tamper=False)
        result = CliRunner().invoke(app, ["verify"])
        assert result.exit_code == 0, result.output
        assert "ledger OK" in result.output

    def test_tampered_entry_exits_non_zero(self, settings: Settings) -> None:
        _prepare(settings.database_url, tamper=True)
        result = CliRunner().invoke(app, ["verify"])
        assert result.exit_code == 1
        assert "ledger BREACHED" in result.output
        assert "BREACH balanced: transaction" in result.output

    def test_real_process_with_database_url(self, settings: Settings, tmp_path: Path) -> None:
        _prepare(settings.database_url, tamper=True)
        env = {**os.environ, "METERING_DATABASE_URL": settings.database_url, "METERING_DATA_DIR": str(tmp_path)}
        completed = subprocess.run(
            [sys.executable, "-m", "cli.main", "verify"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert completed.returncode == 1, completed.stdout + completed.stderr
        assert "off by" in completed.stdout
