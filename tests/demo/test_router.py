"""The reference router alone, against a real Metering app and simulated providers on loopback
(SQLite and PostgreSQL): what it asks authorize, where it forwards, and what the hook records."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from api.app import create_app
from demo.platform import Platform
from demo.providers import CHAT_MODEL, HARDWARE_PRICES, HF_INFERENCE, PROVIDERS, SimulatedProvider, compute_time_ms
from demo.router import RouterConfig, create_router_app
from demo.servers import LoopbackServer
from metering.config import Settings
from metering.db import Database
from metering.models import Hold, UsageRecord
from metering.money import duration_cost_nano
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET

USERS = {"tok-alice": "alice", "tok-mallory": "mallory", "tok-kai": "kai"}


@dataclass
class World:
    router_url: str
    router_app: FastAPI
    providers: dict[str, SimulatedProvider]
    http: httpx.AsyncClient

    async def chat(
        self, token: str, provider: str, *, bill_to: str | None = None, model: str = CHAT_MODEL
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} | ({"X-HF-Bill-To": bill_to} if bill_to else {})
        body = {"model": model, "provider": provider, "messages": [{"role": "user", "content": "hi"}]}
        return await self.http.post(f"{self.router_url}/v1/chat/completions", json=body, headers=headers)

    async def delivered(self) -> None:
        assert await self.router_app.state.sender.flush(timeout=20) is True

    def inference_calls(self) -> dict[str, int]:
        return {pid: provider.state.inference_calls for pid, provider in self.providers.items()}


@pytest.fixture
async def world(settings: Settings, db: Database, tmp_path: Path) -> AsyncIterator[World]:
    """acme (team) with alice as admin and fireworks-ai switched off; mallory is no member; kai brings his own key."""
    providers = {spec.id: SimulatedProvider(spec) for spec in PROVIDERS}
    metering = LoopbackServer("metering", create_app(settings, database=db))
    # Each server is stopped even when a later one fails to start: one left serving breaks the tests after it.
    async with contextlib.AsyncExitStack() as stack:
        for server in [*(provider.server for provider in providers.values()), metering]:
            await server.start()
            stack.push_async_callback(server.stop)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        platform = Platform(http, metering_url=metering.url, service_token=SERVICE_TOKEN, jwt_secret=TEST_JWT_SECRET)
        for provider_id, provider in providers.items():
            await platform.put_provider(provider_id, provider.registration())
        for name, kind, plan in (
            ("alice", "user", "pro"),
            ("mallory", "user", "free"),
            ("kai", "user", "pro"),
            ("acme", "org", "team"),
        ):
            await platform.put_account(name, kind=kind, plan=plan)
        await platform.put_member("acme", "alice", "admin")
        await platform.set_disabled_providers("acme", ["fireworks-ai"], as_user="alice")
        config = RouterConfig(
            metering_url=metering.url,
            service_token=SERVICE_TOKEN,
            provider_urls={pid: provider.url for pid, provider in providers.items()},
            provider_keys={pid: "platform-key" for pid in providers},
            users=USERS,
            spool_path=tmp_path / "router" / "spool.db",
            custom_keys={"kai": {"together": "kai-key"}},
        )
        router_app = create_router_app(config)
        router = LoopbackServer("router", router_app)
        await router.start()
        stack.push_async_callback(router.stop)
        yield World(router.url, router_app, providers, http)


async def _records(db: Database) -> list[UsageRecord]:
    async with db.session_scope() as session:
        return list(await session.scalars(select(UsageRecord).order_by(UsageRecord.id)))


class TestPreferenceListAndBillTo:
    async def test_the_org_disabled_provider_is_skipped_and_the_org_pays(self, world: World, db: Database) -> None:
        response = await world.chat("tok-alice", "fireworks-ai together", bill_to="acme")
        assert response.status_code == 200, response.text
        assert response.headers["X-Inference-Provider"] == "together"
        assert response.headers["X-Billing-Account"] == "acme"
        assert world.inference_calls() == {"together": 1, "fireworks-ai": 0, HF_INFERENCE: 0}
        await world.delivered()
        [record] = await _records(db)
        assert (record.provider_id, record.user_name, record.bill_to, record.billing_account) == (
            "together",
            "alice",
            "acme",
            "acme",
        )
        assert record.request_id == response.json()["id"]
        async with db.session_scope() as session:
            hold = await session.get(Hold, record.hold_id)
        assert (hold.account_name, hold.provider_id, hold.status) == ("acme", "together", "attached")

    async def test_without_bill_to_the_user_pays_and_the_first_choice_is_used(self, world: World, db: Database) -> None:
        response = await world.chat("tok-alice", "fireworks-ai together")
        assert response.status_code == 200
        assert (response.headers["X-Inference-Provider"], response.headers["X-Billing-Account"]) == (
            "fireworks-ai",
            "alice",
        )
        await world.delivered()
        [record] = await _records(db)
        assert (record.provider_id, record.bill_to, record.billing_account) == ("fireworks-ai", None, "alice")

    async def test_a_non_member_naming_the_org_is_refused_before_any_provider(self, world: World, db: Database) -> None:
        response = await world.chat("tok-mallory", "together", bill_to="acme")
        assert response.status_code == 403
        assert response.json()["error"]["reason"] == "not_a_member"
        assert sum(world.inference_calls().values()) == 0
        await world.delivered()
        assert await _records(db) == []

    async def test_only_a_disabled_provider_is_refused_for_the_org(self, world: World) -> None:
        response = await world.chat("tok-alice", "fireworks-ai", bill_to="acme")
        assert (response.status_code, response.json()["error"]["reason"]) == (403, "provider_disabled")
        assert world.inference_calls()["fireworks-ai"] == 0

    async def test_an_unknown_token_is_401(self, world: World) -> None:
        response = await world.chat("tok-nobody", "together")
        assert response.status_code == 401
        assert sum(world.inference_calls().values()) == 0


class TestRecords:
    async def test_a_custom_key_request_is_recorded_without_hold_or_price(self, world: World, db: Database) -> None:
        response = await world.chat("tok-kai", "together")
        assert response.status_code == 200
        await world.delivered()
        [record] = await _records(db)
        assert (record.custom_key, record.status, record.hold_id, record.cost_nano_usd) == (
            True,
            "custom_key",
            None,
            None,
        )

    async def test_compute_time_headers_price_the_request(self, world: World, db: Database) -> None:
        response = await world.chat("tok-alice", HF_INFERENCE)
        assert response.status_code == 200
        await world.delivered()
        [record] = await _records(db)
        seed = world.providers[HF_INFERENCE].seed
        expected_ms = compute_time_ms(seed, record.request_id, 20_000, 60_000)
        assert (record.duration_ms, record.hardware, record.status) == (expected_ms, "gpu-h100", "priced")
        assert record.cost_nano_usd == duration_cost_nano(expected_ms, HARDWARE_PRICES["gpu-h100"])
