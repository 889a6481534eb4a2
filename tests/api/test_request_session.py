"""``SessionDep``: a route's one transaction commits before its response is sent, and a commit that
fails is the response's error, never a 200 for a write that was not kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from api.app import create_app
from api.deps import SessionDep
from metering.config import Settings
from metering.db import QUERY_CANCELED, STATEMENT_TIMEOUT_DETAIL, Database
from metering.errors import NotFound
from metering.providers.service import ProviderRegistration, provider_service
from tests.api.test_providers_routes import REGISTRATION
from tests.conftest import SERVICE_TOKEN

BASE_URL = "http://metering.test"
AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
PUT_PATH = "/internal/v1/providers/together"
GET_PATH = "/v1/providers/together"


@pytest.fixture
def app(settings: Settings, db: Database) -> FastAPI:
    return create_app(settings, database=db)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process; an error no handler answers is the 500 a server would send, not raised here."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as client:
        yield client


def fail_next_commit(monkeypatch: pytest.MonkeyPatch, db: Database, error: Exception) -> None:
    """The engine's next COMMIT raises ``error`` from the driver (and the transaction stays uncommitted)."""
    dialect = db.engine.dialect
    original = dialect.do_commit

    def failing(dbapi_connection: object) -> None:
        monkeypatch.setattr(dialect, "do_commit", original)
        raise error

    monkeypatch.setattr(dialect, "do_commit", failing)


def driver_error(db: Database, kind: str, message: str, *, sqlstate: str | None = None) -> Exception:
    """An exception of the driver's own DB-API class ``kind``, as SQLAlchemy wraps it."""
    error: Exception = getattr(db.engine.dialect.loaded_dbapi, kind)(message)
    if sqlstate is not None:
        error.sqlstate = sqlstate  # type: ignore[attr-defined]
    return error


class TestCommitBeforeResponse:
    async def test_the_next_request_sees_the_write_once_the_response_starts(
        self, app: FastAPI, http: httpx.AsyncClient
    ) -> None:
        seen: list[httpx.Response] = []

        async def looking_when_answered(scope: Scope, receive: Receive, send: Send) -> None:
            async def send_after_looking(message: Message) -> None:
                if message["type"] == "http.response.start" and scope["path"] == PUT_PATH:
                    # The write's response is leaving the app: another request must already see it.
                    # (Were it still uncommitted, SQLite would keep this read waiting for its lock.)
                    async with asyncio.timeout(5):
                        seen.append(await http.get(GET_PATH))
                await send(message)

            await app(scope, receive, send_after_looking)

        transport = httpx.ASGITransport(app=looking_when_answered)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as watched:
            response = await watched.put(PUT_PATH, json=REGISTRATION)

        assert response.status_code == 200, response.text
        assert [(r.status_code, r.json().get("url")) for r in seen] == [(200, REGISTRATION["url"])]


class TestFailedCommit:
    async def test_a_cancelled_commit_is_503_and_nothing_is_kept(
        self, http: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cancelled = driver_error(db, "OperationalError", "canceling statement", sqlstate=QUERY_CANCELED)
        fail_next_commit(monkeypatch, db, cancelled)

        response = await http.put(PUT_PATH, json=REGISTRATION)

        assert (response.status_code, response.json()) == (
            503,
            {"error": "StatementTimeout", "detail": STATEMENT_TIMEOUT_DETAIL},
        )
        assert (await http.get(GET_PATH)).status_code == 404

    async def test_any_other_failed_commit_is_500(
        self, http: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fail_next_commit(monkeypatch, db, driver_error(db, "IntegrityError", "deferred constraint violated"))

        response = await http.put(PUT_PATH, json=REGISTRATION)

        assert response.status_code == 500
        assert (await http.get(GET_PATH)).status_code == 404
        assert (await http.put(PUT_PATH, json=REGISTRATION)).status_code == 200


class TestRouteThatRaises:
    async def test_its_writes_are_rolled_back(self, app: FastAPI, http: httpx.AsyncClient) -> None:
        async def write_then_refuse(session: SessionDep) -> None:
            await provider_service.upsert(
                session,
                provider_id="together",
                registration=ProviderRegistration(
                    url="https://hf.example",
                    pricing="compute_time",
                    hardware_prices_nano_usd_per_second={"cpu-basic": 120_000},
                ),
            )
            await session.flush()
            raise NotFound("refused after writing")

        app.add_api_route("/test/write-then-refuse", write_then_refuse, methods=["POST"])

        response = await http.post("/test/write-then-refuse")

        assert (response.status_code, response.json()["error"]) == (404, "NotFound")
        assert (await http.get(GET_PATH)).status_code == 404
