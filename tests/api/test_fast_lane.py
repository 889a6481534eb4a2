"""The hot path's API shortcuts held to the ordinary path (``api.fast_lane``, ``metering.hot_path.collector``).

The fast lane must answer exactly as FastAPI would, byte for byte, and hand FastAPI everything else.
"""

from __future__ import annotations

import gc

import httpx
import orjson
import pytest
from fastapi.routing import APIRoute

from api.app import create_app
from metering.authorize.service import authorize_service
from metering.config import Settings
from metering.db import Database
from metering.errors import ServiceUnavailable
from tests.api.test_authorize_routes import URL, refused, seeded
from tests.conftest import SERVICE_TOKEN
from tests.metering.authorize.helpers import holds

__all__ = ["seeded"]  # the route's tests' accounts and providers, for every test here


class TestFastLane:
    """Everyday requests skip FastAPI's request handling; every other request gets FastAPI's own answer."""

    @pytest.fixture
    def framework_calls(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """Requests the route handed to FastAPI's handling, by content type."""
        calls: list[str] = []
        framework_handle = APIRoute.handle

        async def counted(route, scope, receive, send):
            calls.append(dict(scope["headers"]).get(b"content-type", b"").decode())
            await framework_handle(route, scope, receive, send)

        monkeypatch.setattr(APIRoute, "handle", counted)
        return calls

    async def post(
        self, client: httpx.AsyncClient, body: bytes, content_type: str = "application/json", **headers: str
    ):
        return await client.post(URL, content=body, headers={"Content-Type": content_type, **headers})

    @pytest.mark.parametrize(
        "body",
        [
            {"user": "alice", "provider": "nowhere", "model": "m"},
            {"user": "acme", "provider": "together", "model": "m"},
            {"user": "carol", "bill_to": "acme", "provider": "together", "model": "m"},
            {"user": "bob", "bill_to": "acme", "provider": "paid-only together", "model": "m", "custom_key": True},
        ],
    )
    async def test_same_answer_both_ways(
        self, client: httpx.AsyncClient, framework_calls: list[str], body: dict
    ) -> None:
        encoded = orjson.dumps(body)
        fast = await self.post(client, encoded)
        framework = await self.post(client, encoded, "application/json; charset=utf-8")
        assert framework_calls == ["application/json; charset=utf-8"]
        assert fast.status_code == framework.status_code == 200
        assert fast.content == framework.content
        assert fast.headers["content-type"] == framework.headers["content-type"] == "application/json"
        assert fast.headers["content-length"] == framework.headers["content-length"]

    async def test_an_allowed_request_takes_the_fast_lane(
        self, client: httpx.AsyncClient, framework_calls: list[str], db: Database
    ) -> None:
        answer = await self.post(client, b'{"user": "alice", "provider": "together", "model": "org/m"}')
        assert answer.status_code == 200
        assert (answer.json()["allowed"], framework_calls) == (True, [])
        assert [hold.id for hold in await holds(db)] == [answer.json()["hold_id"]]

    @pytest.mark.parametrize(
        ("body", "content_type", "status", "error"),
        [
            (b'{"user": "alice", "provider": "together", "model": ', "application/json", 422, "ValidationError"),
            (
                b'{"user": "alice", "provider": "together", "model": "m", "model": 7}',
                "application/json",
                422,
                "ValidationError",
            ),
            (
                b'{"user": "alice", "provider": "together", "model": "m", "custom_key": NaN}',
                "application/json",
                422,
                "ValidationError",
            ),
            (b'["alice", "together", "m"]', "application/json", 422, "ValidationError"),
            (b'{"user": "alice", "provider": "together", "model": "m"}', "text/plain", 422, "ValidationError"),
            (b'{"user": "al\xffice", "provider": "together", "model": "m"}', "application/json", 400, "BadRequest"),
            (b"\xff\xfe{\x00}\x00", "application/json", 422, "ValidationError"),
            (b"", "application/json", 422, "ValidationError"),
        ],
    )
    async def test_malformed_bodies_get_the_framework_answer(
        self,
        client: httpx.AsyncClient,
        framework_calls: list[str],
        db: Database,
        body: bytes,
        content_type: str,
        status: int,
        error: str,
    ) -> None:
        answer = await self.post(client, body, content_type)
        assert (answer.status_code, answer.json()["error"]) == (status, error)
        assert len(framework_calls) == 1
        assert await holds(db) == []

    @pytest.mark.parametrize(
        ("authorization", "status"),
        [
            (f"bearer {SERVICE_TOKEN}", 200),
            (f"Bearer   {SERVICE_TOKEN}  ", 200),
            (f"Bearer {SERVICE_TOKEN}x", 401),
            (f"Basic {SERVICE_TOKEN}", 401),
            ("Bearer", 401),
            ("", 401),
        ],
    )
    async def test_token_forms_as_the_framework_reads_them(
        self, client: httpx.AsyncClient, framework_calls: list[str], authorization: str, status: int
    ) -> None:
        body = b'{"user": "alice", "provider": "nowhere", "model": "m"}'
        answer = await self.post(client, body, Authorization=authorization)
        framework = await self.post(client, body, "application/json; charset=utf-8", Authorization=authorization)
        assert answer.status_code == framework.status_code == status
        assert answer.content == framework.content
        if status == 401:
            assert answer.json() == {"error": "Unauthenticated", "detail": "a valid service token is required"}

    async def test_a_streamed_body_goes_through_the_framework(
        self, client: httpx.AsyncClient, framework_calls: list[str]
    ) -> None:
        async def chunks():
            yield b'{"user": "alice", '
            yield b'"provider": "nowhere", "model": "m"}'

        answer = await client.post(URL, content=chunks(), headers={"Content-Type": "application/json"})
        assert answer.status_code == 200
        assert answer.json() == refused("unknown_provider", "alice")
        assert len(framework_calls) == 1

    async def test_a_body_over_the_limit_is_refused_by_the_framework(
        self, client: httpx.AsyncClient, framework_calls: list[str], settings: Settings, db: Database
    ) -> None:
        padding = " " * settings.max_body_bytes
        body = f'{{"user": "alice", "provider": "together", "model": "m"{padding}}}'.encode()
        answer = await self.post(client, body)
        assert (answer.status_code, answer.json()["error"]) == (413, "PayloadTooLarge")
        assert await holds(db) == []

    async def test_a_refusal_of_the_decision_gets_the_app_s_error_body(
        self, client: httpx.AsyncClient, framework_calls: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A lost database connection is the real cause of this error; raising it directly is the
        # only way to make both lanes meet it at the same point.
        async def unavailable(*_args: object, **_kwargs: object) -> None:
            raise ServiceUnavailable("the database connection was lost; ask again")

        monkeypatch.setattr(authorize_service, "authorize", unavailable)
        body = b'{"user": "alice", "provider": "together", "model": "m"}'
        fast = await self.post(client, body)
        framework = await self.post(client, body, "application/json; charset=utf-8")
        assert framework_calls == ["application/json; charset=utf-8"]
        assert fast.status_code == framework.status_code == 503
        assert fast.content == framework.content
        assert fast.json() == {"error": "ServiceUnavailable", "detail": "the database connection was lost; ask again"}
        assert fast.headers["content-type"] == framework.headers["content-type"] == "application/json"

    async def test_turned_off_every_request_takes_the_framework_s_path(
        self, settings: Settings, db: Database, framework_calls: list[str]
    ) -> None:
        app = create_app(settings.model_copy(update={"authorize_fast_lane": False}), database=db)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://metering.test",
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        ) as client:
            answer = await self.post(client, b'{"user": "alice", "provider": "together", "model": "m"}')
        assert (answer.status_code, answer.json()["allowed"]) == (200, True)
        assert framework_calls == ["application/json"]

    async def test_other_methods_are_the_framework_s(self, client: httpx.AsyncClient) -> None:
        answer = await client.get(URL)
        assert answer.status_code == 405


async def test_startup_moves_long_lived_objects_out_of_the_collector(settings: Settings, db: Database) -> None:
    """So full collections under load no longer walk the app's start-up objects (p99 pauses)."""
    app = create_app(settings, database=db)
    gc.unfreeze()
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
