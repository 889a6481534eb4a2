"""Fixtures: every database test runs on SQLite and, when reachable, on PostgreSQL."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from metering.config import Settings, set_settings
from metering.db import Database
from tests.support import databases

SERVICE_TOKEN = "test-service-token"
TEST_SECRET_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
TEST_JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return databases.migrated_sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture(scope="session")
def postgres_session_url() -> Iterator[str | None]:
    if not databases.postgres_reachable():
        if databases.REQUIRE_POSTGRES:
            pytest.fail("PostgreSQL is required (METERING_TEST_REQUIRE_POSTGRES=1) but not reachable")
        yield None
        return
    name, url = databases.migrated_pg_database()
    yield url
    databases.drop_pg_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, sqlite_template: Path, postgres_session_url: str | None, tmp_path: Path) -> str:
    """A migrated, empty database of the test's backend."""
    if backend == "sqlite":
        return databases.copy_sqlite(sqlite_template, tmp_path)
    if postgres_session_url is None:
        pytest.skip("PostgreSQL not reachable")
    databases.truncate_pg(postgres_session_url)
    return postgres_session_url


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "embedded",
        "database_url": database_url,
        "data_dir": data_dir,
        "service_tokens": SERVICE_TOKEN,
        "secret_key": TEST_SECRET_KEY,
        "jwt_secret": TEST_JWT_SECRET,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Iterator[Settings]:
    value = make_settings(database_url, tmp_path)
    set_settings(value)
    yield value
    set_settings(None)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def session(db: Database):
    """A session in one transaction, committed at the end of the test body's block."""
    async with db.session_scope() as session:
        yield session


@pytest.fixture
async def client(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, authenticated with the service token."""
    app = create_app(settings, database=db)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://metering.test", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}
    ) as http:
        yield http


@pytest.fixture
def anonymous_client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The same app without credentials."""
    return httpx.AsyncClient(transport=client._transport, base_url="http://metering.test")


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"postgres dsn: {databases.PG_ADMIN_DSN} (required: {os.environ.get('METERING_TEST_REQUIRE_POSTGRES') == '1'})"
    )
