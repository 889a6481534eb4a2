"""Health, readiness, metrics and the body-size limit."""

from __future__ import annotations

import httpx


async def test_healthz_and_readyz(anonymous_client: httpx.AsyncClient, backend: str) -> None:
    assert (await anonymous_client.get("/healthz")).json() == {"status": "ok"}
    ready = await anonymous_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == ("sqlite" if backend == "sqlite" else "postgresql")


async def test_metrics_are_prometheus_text(anonymous_client: httpx.AsyncClient) -> None:
    response = await anonymous_client.get("/metrics")
    assert response.status_code == 200
    assert "metering_usage_records_total" in response.text


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, settings) -> None:
    body = b'{"kind": "user", "plan": "pro", "pad": "' + b"x" * settings.max_body_bytes + b'"}'
    response = await client.put("/internal/v1/accounts/big", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "PayloadTooLarge"
