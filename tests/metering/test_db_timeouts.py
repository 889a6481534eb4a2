"""Statement timeouts (SPEC §8): every PostgreSQL connection of a ``Database`` runs under its
``statement_timeout``, and a statement cancelled by it raises ``StatementTimeout``.

On a real PostgreSQL server: the statements really run past the timeout and are cancelled by it.
"""

from __future__ import annotations

import time

import asyncpg
import pytest
from sqlalchemy import text

from jobs.scheduler import jobs_database
from metering.config import Settings
from metering.db import STATEMENT_TIMEOUT_DETAIL, Database, server_settings, statement_timeout_of
from metering.errors import ServiceUnavailable, StatementTimeout
from metering.hot_path.pg_connections import decision_connections

# Long enough that a checkout and a round trip fit under it, short enough that the tests are quick.
TIMEOUT_MS = 200


@pytest.fixture
async def timed_db(settings: Settings) -> Database:
    database = Database(settings.database_url, statement_timeout_ms=TIMEOUT_MS)
    yield database
    await database.dispose()


@pytest.fixture
def postgres(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("statement_timeout is a PostgreSQL setting")


async def show_statement_timeout(database: Database) -> str:
    async with database.session_scope() as session:
        return await session.scalar(text("SHOW statement_timeout"))


class TestStatementTimeout:
    async def test_every_connection_opens_with_it(self, timed_db: Database, postgres: None) -> None:
        assert await show_statement_timeout(timed_db) == f"{TIMEOUT_MS}ms"
        assert server_settings(timed_db.engine) == {"statement_timeout": str(TIMEOUT_MS)}

    async def test_none_leaves_the_servers_own(self, db: Database, postgres: None) -> None:
        assert await show_statement_timeout(db) == "0"
        assert server_settings(db.engine) == {}

    async def test_a_statement_past_it_raises_statement_timeout_and_the_database_stays_usable(
        self, timed_db: Database, postgres: None
    ) -> None:
        started = time.monotonic()
        with pytest.raises(StatementTimeout) as raised:
            async with timed_db.session_scope() as session:
                await session.execute(text("SELECT pg_sleep(5)"))

        assert time.monotonic() - started < 2
        assert isinstance(raised.value, ServiceUnavailable)
        assert raised.value.detail == STATEMENT_TIMEOUT_DETAIL
        async with timed_db.session_scope() as session:
            assert await session.scalar(text("SELECT 1")) == 1

    async def test_a_statement_within_it_runs(self, timed_db: Database, postgres: None) -> None:
        async with timed_db.session_scope() as session:
            assert await session.scalar(text("SELECT 1 FROM pg_sleep(0.01)")) == 1

    async def test_other_database_errors_are_left_alone(self, timed_db: Database, postgres: None) -> None:
        with pytest.raises(Exception) as raised:
            async with timed_db.session_scope() as session:
                await session.execute(text("SELECT 1 / 0"))

        assert not isinstance(raised.value, StatementTimeout)
        assert statement_timeout_of(raised.value) is None

    async def test_sqlite_takes_it_and_ignores_it(self, backend: str, timed_db: Database) -> None:
        if backend != "sqlite":
            pytest.skip("SQLite")
        async with timed_db.session_scope() as session:
            assert await session.scalar(text("SELECT 1")) == 1
        assert server_settings(timed_db.engine) == {}

    @pytest.mark.parametrize("value", [0, -1])
    def test_zero_is_refused_because_postgresql_reads_it_as_none(self, database_url: str, value: int) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            Database(database_url, statement_timeout_ms=value)


class TestWithStatementTimeout:
    async def test_its_transactions_run_under_the_longer_timeout_and_the_pool_keeps_its_own(
        self, timed_db: Database, postgres: None
    ) -> None:
        longer = timed_db.with_statement_timeout(5_000)

        assert await show_statement_timeout(longer) == "5s"
        async with longer.session_scope() as session:
            await session.execute(text("SELECT pg_sleep(0.5)"))  # past the pool's 200 ms
        assert await show_statement_timeout(timed_db) == f"{TIMEOUT_MS}ms"
        assert longer.engine is timed_db.engine

    async def test_a_statement_past_it_raises_statement_timeout(self, db: Database, postgres: None) -> None:
        shorter = db.with_statement_timeout(TIMEOUT_MS)

        with pytest.raises(StatementTimeout):
            async with shorter.session_scope() as session:
                await session.execute(text("SELECT pg_sleep(5)"))

    async def test_sqlite_ignores_it(self, backend: str, db: Database) -> None:
        if backend != "sqlite":
            pytest.skip("SQLite")
        async with db.with_statement_timeout(5_000).session_scope() as session:
            assert await session.scalar(text("SELECT 1")) == 1


class TestDecisionConnections:
    """The authorize fast path's own asyncpg connections run under the engine's timeout too."""

    async def test_they_open_with_the_engines_statement_timeout(self, timed_db: Database, postgres: None) -> None:
        connections = decision_connections(timed_db.engine)
        driver = await connections.acquire()
        try:
            assert await driver.fetchval("SHOW statement_timeout") == f"{TIMEOUT_MS}ms"
            with pytest.raises(asyncpg.QueryCanceledError) as raised:
                await driver.fetchval("SELECT pg_sleep(5)")
        finally:
            connections.release(driver)

        timeout = statement_timeout_of(raised.value)
        assert isinstance(timeout, StatementTimeout) and timeout.detail == STATEMENT_TIMEOUT_DETAIL


class TestJobsDatabase:
    async def test_jobs_run_under_the_jobs_timeout(self, settings: Settings, backend: str) -> None:
        settings.jobs_statement_timeout_ms = 1_500
        database = jobs_database(settings.database_url)
        try:
            assert database.statement_timeout_ms == 1_500
            if backend == "postgres":
                assert await show_statement_timeout(database) == "1500ms"
        finally:
            await database.dispose()


def test_a_cancelled_statement_is_found_through_wrappers() -> None:
    cancelled = asyncpg.QueryCanceledError("canceling statement due to statement timeout")
    try:
        try:
            raise cancelled
        except asyncpg.QueryCanceledError as error:
            raise RuntimeError("wrapped") from error
    except RuntimeError as wrapped:
        assert isinstance(statement_timeout_of(wrapped), StatementTimeout)
    assert statement_timeout_of(TimeoutError()) is None
