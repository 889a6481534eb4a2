"""Connections per process from the settings (``METERING_DATABASE_POOL_SIZE``), and the PgBouncer mode
(``METERING_DATABASE_PGBOUNCER``): timeouts set per transaction, no statement kept prepared."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from metering.authorize.service import AuthorizeRequest, authorize_service
from metering.config import set_settings
from metering.db import Database, pgbouncer_settings, server_settings
from metering.hot_path.pg_connections import decision_connections
from tests.conftest import make_settings
from tests.metering.authorize.helpers import seed


async def test_the_pool_size_is_the_settings_unless_given(database_url: str, tmp_path: Path) -> None:
    set_settings(make_settings(database_url, tmp_path, database_pool_size=3))
    try:
        database, given = Database(database_url), Database(database_url, pool_size=5)
        try:
            assert (database.pool_size, given.pool_size) == (3, 5)
        finally:
            await database.dispose()
            await given.dispose()
    finally:
        set_settings(None)


async def test_behind_pgbouncer_the_timeout_is_set_in_each_transaction(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    """Straight to PostgreSQL here (``tests/deploy/test_pgbouncer.py`` goes through a real PgBouncer)."""
    if backend != "postgres":
        pytest.skip("PgBouncer pools PostgreSQL connections")
    set_settings(make_settings(database_url, tmp_path, database_pgbouncer=True))
    database = Database(database_url, statement_timeout_ms=1234)
    try:
        assert (server_settings(database.engine), pgbouncer_settings(database.engine)) == (
            {},
            {"statement_timeout": "1234"},
        )
        async with database.session_scope() as session:
            assert await session.scalar(text("SHOW statement_timeout")) == "1234ms"
        async with database.engine.connect() as connection:
            # Nothing of the transaction's setting is left on the connection afterwards.
            assert await connection.scalar(text("SELECT current_setting('statement_timeout', true)")) == "1234ms"
            await connection.rollback()
            raw = (await connection.get_raw_connection()).driver_connection
            assert await raw.fetchval("SHOW statement_timeout") != "1234ms"
        await seed(database)
        decision = await authorize_service.authorize(
            database, request=AuthorizeRequest(user="alice", bill_to=None, provider="together", model="org/m")
        )
        assert decision.allowed
        assert decision_connections(database.engine).begin == "BEGIN; SET LOCAL statement_timeout = 1234"
    finally:
        await database.dispose()
        set_settings(None)
