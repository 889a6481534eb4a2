"""Every PostgreSQL statement of a request runs under the API's statement timeout (SPEC §8), and
one cancelled by it is a 503 in the error body, never a hang or a 500.

The statements are really held up on a real PostgreSQL server: another connection locks the
table they read, so they wait until the timeout cancels them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from api.app import create_app
from metering.authorize.catalog import provider_catalog
from metering.config import Settings
from metering.db import STATEMENT_TIMEOUT_DETAIL, Database
from tests.conftest import SERVICE_TOKEN
from tests.factories.billing_data import as_user, cost_posting, grant_posting, post, seed_world

API_TIMEOUT_MS = 200
ERIN, FINANCE = as_user("erin"), as_user("fin", "finance")
TIMED_OUT = {"error": "StatementTimeout", "detail": STATEMENT_TIMEOUT_DETAIL}


@pytest.fixture
async def timed_client(backend: str, settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The app on PostgreSQL with a 200 ms statement timeout; the seeded accounts of the other API tests."""
    if backend != "postgres":
        pytest.skip("statement_timeout is a PostgreSQL setting")
    provider_catalog.clear()
    await seed_world(db)
    database = Database(settings.database_url, statement_timeout_ms=API_TIMEOUT_MS)
    app = create_app(settings, database=database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as http:
        yield http
    await database.dispose()


@asynccontextmanager
async def locked(database_url: str, *tables: str) -> AsyncIterator[asyncpg.Connection]:
    """``tables`` locked against every reader by another connection, until the block ends."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


async def timed(request) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    async with asyncio.timeout(30):
        response = await request
    return response, time.monotonic() - started


class TestCancelledStatementsAre503:
    async def test_a_user_route(self, timed_client: httpx.AsyncClient, settings: Settings) -> None:
        async with locked(settings.database_url, "accounts"):
            response, seconds = await timed(timed_client.get("/v1/accounts/erin/billing", headers=ERIN))

        assert (response.status_code, response.json()) == (503, TIMED_OUT)
        assert seconds < 5
        after = await timed_client.get("/v1/accounts/erin/billing", headers=ERIN)
        assert after.status_code == 200

    async def test_the_usage_series(self, timed_client: httpx.AsyncClient, settings: Settings) -> None:
        async with locked(settings.database_url, "usage_records", "usage_rollups"):
            response, seconds = await timed(
                timed_client.get(
                    "/v1/accounts/erin/usage",
                    params={"from": "2026-10-01T00:30:00Z", "to": "2026-10-31", "interval": "hour"},
                    headers=ERIN,
                )
            )

        assert (response.status_code, response.json()) == (503, TIMED_OUT)
        assert seconds < 5

    async def test_the_billing_page_answers_with_a_page(
        self, timed_client: httpx.AsyncClient, settings: Settings
    ) -> None:
        async with locked(settings.database_url, "accounts"):
            response, seconds = await timed(timed_client.get("/billing/erin", headers=ERIN))

        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/html")
        assert "StatementTimeout" in response.text
        assert seconds < 5
        assert (await timed_client.get("/billing/erin", headers=ERIN)).status_code == 200

    @pytest.mark.parametrize(
        "content_type",
        [
            "application/json",  # the fast lane before the framework
            "application/json; charset=utf-8",  # the framework's route
        ],
    )
    async def test_authorize_on_its_own_connections(
        self, timed_client: httpx.AsyncClient, settings: Settings, content_type: str
    ) -> None:
        body = b'{"user": "erin", "provider": "together", "model": "org/m"}'
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}", "Content-Type": content_type}
        warm = await timed_client.post("/internal/v1/authorize", content=body, headers=headers)
        assert warm.status_code == 200, warm.text

        async with locked(settings.database_url, "accounts"):
            response, seconds = await timed(timed_client.post("/internal/v1/authorize", content=body, headers=headers))

        assert (response.status_code, response.json()) == (503, TIMED_OUT)
        assert seconds < 5
        again = await timed_client.post("/internal/v1/authorize", content=body, headers=headers)
        assert (again.status_code, again.json()["allowed"]) == (200, True)


class TestExportsGetTheExportTimeout:
    async def test_an_export_may_wait_longer_than_the_api_timeout(
        self, timed_client: httpx.AsyncClient, settings: Settings, db: Database
    ) -> None:
        await post(
            db,
            grant_posting("acme", "2026-10", 4_000_000_000),
            cost_posting("cost:1", "2026-10", account="acme", provider="together", credits=1_500_000_000),
        )
        settings.export_statement_timeout_ms = 60_000

        async with locked(settings.database_url, "ledger_entries"):
            export = asyncio.create_task(
                timed_client.get("/v1/finance/exports/provider-payables", params={"period": "2026-10"}, headers=FINANCE)
            )
            await asyncio.sleep(4 * API_TIMEOUT_MS / 1000)
            assert not export.done()  # waiting on the lock, past the API timeout
        response, seconds = await timed(export)

        assert response.status_code == 200, response.text
        assert response.text.splitlines()[1:] == ["together,2026-10,1500000000,1"]
        assert seconds < 5


class TestTheAppsOwnDatabase:
    async def test_the_lifespan_builds_it_with_the_api_timeout(self, settings: Settings, backend: str) -> None:
        settings.api_statement_timeout_ms = 1_234
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            database: Database = app.state.database
            assert database.statement_timeout_ms == 1_234
            if backend == "postgres":
                async with database.session_scope() as session:
                    assert await session.scalar(text("SHOW statement_timeout")) == "1234ms"
