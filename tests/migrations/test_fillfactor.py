"""The tables cost collection rewrites in place leave room on each page for HOT updates (PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from metering.db import Database


async def test_hot_updated_tables_have_a_fillfactor(db: Database) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("fillfactor is a PostgreSQL storage parameter")
    async with db.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT relname, reloptions FROM pg_class WHERE relname IN ('account_periods', 'ledger_accounts')")
        )
        options = {name: set(reloptions or ()) for name, reloptions in rows}
        # usage_records is partitioned by month: its rows, hence the setting, live in its partitions.
        partitions = await connection.execute(
            text(
                "SELECT c.relname, c.reloptions FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST('usage_records' AS regclass)"
            )
        )
        usage = {name: set(reloptions or ()) for name, reloptions in partitions}
    assert options == {"account_periods": {"fillfactor=50"}, "ledger_accounts": {"fillfactor=70"}}
    assert "usage_records_default" in usage
    assert {name: {"fillfactor=70"} for name in usage} == usage
