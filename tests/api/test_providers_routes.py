"""Provider registration and the public provider list; the token is never returned."""

from __future__ import annotations

import httpx

from metering.config import Settings
from metering.db import Database
from metering.models import Provider
from metering.providers.service import provider_service

REGISTRATION = {
    "url": "https://api.example.com",
    "request_id_header": "Inference-Id",
    "pricing": "cost_endpoint",
    "cost_endpoint": "https://api.example.com/billing/costs",
    "cost_token": "s3cret-token-value",
    "credit_eligible": True,
    "default_estimate_nano_usd": 100000,
    "models": {
        "org/name": {"input_nano_usd_per_million_tokens": 200000000, "output_nano_usd_per_million_tokens": 2000000000}
    },
}


class TestPutProvider:
    async def test_registers_and_encrypts_the_token(self, client: httpx.AsyncClient, db: Database) -> None:
        response = await client.put("/internal/v1/providers/together", json=REGISTRATION)
        assert response.status_code == 200
        assert "s3cret-token-value" not in response.text
        assert "cost_token" not in response.json()
        async with db.session_scope() as session:
            provider = await session.get(Provider, "together")
            assert b"s3cret-token-value" not in provider.cost_token_encrypted
            assert provider_service.cost_token(provider) == "s3cret-token-value"
            assert provider.default_estimate_nano_usd == 100_000

    async def test_update_without_token_keeps_it(self, client: httpx.AsyncClient, db: Database) -> None:
        await client.put("/internal/v1/providers/together", json=REGISTRATION)
        without_token = {k: v for k, v in REGISTRATION.items() if k != "cost_token"} | {"credit_eligible": False}
        assert (await client.put("/internal/v1/providers/together", json=without_token)).status_code == 200
        async with db.session_scope() as session:
            provider = await session.get(Provider, "together")
            assert provider_service.cost_token(provider) == "s3cret-token-value"
            assert provider.credit_eligible is False

    async def test_cost_endpoint_pricing_needs_endpoint_and_token(self, client: httpx.AsyncClient) -> None:
        no_token = {k: v for k, v in REGISTRATION.items() if k != "cost_token"}
        response = await client.put("/internal/v1/providers/newco", json=no_token)
        assert response.status_code == 422
        assert "cost_token" in response.json()["detail"]

    async def test_compute_time_needs_hardware_prices(self, client: httpx.AsyncClient) -> None:
        body = {"url": "https://hf.example", "pricing": "compute_time"}
        assert (await client.put("/internal/v1/providers/hf-inference", json=body)).status_code == 422
        body["hardware_prices_nano_usd_per_second"] = {"cpu-basic": 120000}
        assert (await client.put("/internal/v1/providers/hf-inference", json=body)).status_code == 200

    async def test_float_and_negative_prices_are_refused(self, client: httpx.AsyncClient) -> None:
        assert (
            await client.put("/internal/v1/providers/p1", json=REGISTRATION | {"default_estimate_nano_usd": 1.5})
        ).status_code == 422
        assert (
            await client.put("/internal/v1/providers/p1", json=REGISTRATION | {"default_estimate_nano_usd": -1})
        ).status_code == 422

    async def test_amounts_a_bigint_cannot_hold_are_refused(self, client: httpx.AsyncClient) -> None:
        too_large = 2**63
        compute = {"url": "https://hf.example", "pricing": "compute_time"}
        for body in (
            REGISTRATION | {"default_estimate_nano_usd": too_large},
            compute | {"hardware_prices_nano_usd_per_second": {"cpu": too_large}},
            REGISTRATION
            | {
                "models": {
                    "org/m": {"input_nano_usd_per_million_tokens": too_large, "output_nano_usd_per_million_tokens": 0}
                }
            },
        ):
            response = await client.put("/internal/v1/providers/p1", json=body)
            assert (response.status_code, response.json()["error"]) == (422, "ValidationError"), body
        largest = compute | {"hardware_prices_nano_usd_per_second": {"cpu": too_large - 1}}
        assert (await client.put("/internal/v1/providers/p1", json=largest)).status_code == 200

    async def test_an_estimate_above_the_cost_ceiling_is_refused(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        ceiling = settings.cost_ceiling_nano_usd
        response = await client.put(
            "/internal/v1/providers/p1", json=REGISTRATION | {"default_estimate_nano_usd": ceiling + 1}
        )
        assert response.status_code == 422
        assert "exceeds the per-request cost ceiling" in response.json()["detail"]
        at_ceiling = REGISTRATION | {"default_estimate_nano_usd": ceiling}
        assert (await client.put("/internal/v1/providers/p1", json=at_ceiling)).status_code == 200


class TestPublicProviders:
    async def test_list_and_get_never_show_the_token(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient
    ) -> None:
        await client.put("/internal/v1/providers/together", json=REGISTRATION)
        listed = await anonymous_client.get("/v1/providers")
        assert listed.status_code == 200
        assert listed.json() == [
            {
                "id": "together",
                "url": "https://api.example.com",
                "pricing": "cost_endpoint",
                "request_id_header": "Inference-Id",
                "credit_eligible": True,
                "models": REGISTRATION["models"],
            }
        ]
        one = await anonymous_client.get("/v1/providers/together")
        assert one.json() == listed.json()[0]
        assert "s3cret" not in listed.text + one.text

    async def test_unknown_provider_is_404(self, anonymous_client: httpx.AsyncClient) -> None:
        response = await anonymous_client.get("/v1/providers/nope")
        assert response.status_code == 404
        assert response.json()["error"] == "ProviderNotFound"
