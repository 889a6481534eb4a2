"""The reference router alone, against a real Metering app and simulated providers on loopback
(SQLite and PostgreSQL): what it asks authorize, where it forwards, and what the hook records;
and the request shapes OpenAI-compatible clients send (the world is ``tests.demo.conftest.world``)."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from demo.providers import CHAT_MODEL, HARDWARE_PRICES, HF_INFERENCE, MID_MODEL, SMALL_MODEL, compute_time_ms
from metering.db import Database
from metering.models import Hold, UsageRecord
from metering.money import duration_cost_nano
from tests.demo.conftest import World


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


async def _post(world: World, body: dict, *, token: str = "tok-alice", bill_to: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} | ({"X-HF-Bill-To": bill_to} if bill_to else {})
    return await world.http.post(f"{world.router_url}/v1/chat/completions", json=body, headers=headers)


MESSAGES = [{"role": "user", "content": "hi"}]


class TestClientRequestShapes:
    async def test_a_provider_suffix_on_the_model_picks_the_provider(self, world: World) -> None:
        response = await _post(world, {"model": f"{CHAT_MODEL}:fireworks-ai", "messages": MESSAGES})
        assert response.status_code == 200, response.text
        assert response.headers["X-Inference-Provider"] == "fireworks-ai"
        assert response.json()["model"] == CHAT_MODEL  # the provider sees the bare model
        await world.delivered()
        [record] = await world.records()
        assert (record.provider_id, record.model) == ("fireworks-ai", CHAT_MODEL)

    async def test_a_bare_model_goes_to_the_first_provider_listing_it(self, world: World) -> None:
        response = await _post(world, {"model": MID_MODEL, "messages": MESSAGES})
        assert response.status_code == 200, response.text
        assert response.headers["X-Inference-Provider"] == HF_INFERENCE  # the only one listing it
        response = await _post(world, {"model": SMALL_MODEL, "messages": MESSAGES}, bill_to="acme")
        assert response.headers["X-Inference-Provider"] == "together"  # fireworks-ai is off for acme

    async def test_a_model_nobody_serves_is_404_with_where_to_look(self, world: World) -> None:
        response = await _post(world, {"model": "nobody/serves-this", "messages": MESSAGES})
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("not_found_error", "model_not_found")
        assert "GET /v1/models" in error["message"]
        assert sum(world.inference_calls().values()) == 0

    async def test_naming_two_different_providers_is_400(self, world: World) -> None:
        body = {"model": f"{CHAT_MODEL}:together", "provider": "fireworks-ai", "messages": MESSAGES}
        response = await _post(world, body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "conflicting_provider"

    async def test_a_body_without_a_model_is_400_saying_what_to_send(self, world: World) -> None:
        response = await _post(world, {"messages": MESSAGES})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == 'the body needs "model": "org/name" (or "org/name:provider")'

    async def test_refusals_carry_type_code_message_and_the_reason(self, world: World) -> None:
        response = await _post(world, {"model": f"{CHAT_MODEL}:fireworks-ai", "messages": MESSAGES}, bill_to="acme")
        assert response.status_code == 403
        error = response.json()["error"]
        assert (error["type"], error["code"], error["reason"], error["billing_account"]) == (
            "permission_error",
            "provider_disabled",
            "provider_disabled",
            "acme",
        )
        assert error["message"].startswith("acme has switched off fireworks-ai;")
        assert response.headers["X-Error-Message"] == error["message"]

    async def test_models_lists_each_model_with_its_providers(self, world: World) -> None:
        response = await world.http.get(f"{world.router_url}/v1/models")
        assert response.status_code == 200
        listed = {item["id"]: [p["provider"] for p in item["providers"]] for item in response.json()["data"]}
        assert listed == {
            CHAT_MODEL: ["together", "fireworks-ai", HF_INFERENCE],
            SMALL_MODEL: ["together", "fireworks-ai", HF_INFERENCE],
            MID_MODEL: [HF_INFERENCE],
        }
        assert sum(world.inference_calls().values()) == 0
