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
            text(
                "SELECT relname, reloptions FROM pg_class "
                "WHERE relname IN ('usage_records', 'account_periods', 'ledger_accounts')"
            )
        )
        options = {name: set(reloptions or ()) for name, reloptions in rows}
    assert options == {
        "usage_records": {"fillfactor=70"},
        "account_periods": {"fillfactor=50"},
        "ledger_accounts": {"fillfactor=70"},
    }
