"""Authorize through a real ``metering serve`` on loopback: concurrent routers cannot overspend a limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from metering.db import Database
from metering.limits.service import limits_service
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY
from tests.support.servers import metering_server

ESTIMATE = 100_000


async def test_64_routers_at_once_get_exactly_10_holds(database_url: str, tmp_path: Path) -> None:
    env = {
        "METERING_ENVIRONMENT": "embedded",
        "METERING_DATA_DIR": str(tmp_path),
        "METERING_DATABASE_URL": database_url,
        "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
        "METERING_SECRET_KEY": TEST_SECRET_KEY,
        "METERING_JWT_SECRET": TEST_JWT_SECRET,
    }
    with metering_server(env) as base_url:
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:
            provider = {
                "url": "http://127.0.0.1:9",
                "pricing": "cost_endpoint",
                "cost_endpoint": "http://127.0.0.1:9/costs",
                "cost_token": "token",
                "default_estimate_nano_usd": ESTIMATE,
            }
            assert (await client.put("/internal/v1/providers/together", json=provider)).status_code == 200
            # No seats, so no credits: every estimate is pay-as-you-go against the limit.
            assert (
                await client.put("/internal/v1/accounts/acme", json={"kind": "org", "plan": "team", "seats": 0})
            ).status_code == 200
            assert (await client.put("/internal/v1/orgs/acme/members/alice", json={"role": "write"})).status_code == 200
            database = Database(database_url)
            try:
                async with database.session_scope() as session:
                    await limits_service.set_spending_limit(
                        session, account_name="acme", limit_nano_usd=10 * ESTIMATE, actor="admin"
                    )
            finally:
                await database.dispose()
            body = {"user": "alice", "bill_to": "acme", "provider": "together", "model": "org/m"}
            answers = await asyncio.gather(*(client.post("/internal/v1/authorize", json=body) for _ in range(64)))
    decisions = [answer.json() for answer in answers]
    assert {answer.status_code for answer in answers} == {200}
    assert sum(d["allowed"] for d in decisions) == 10
    assert sorted(d["spending_limit_remaining_nano_usd"] for d in decisions if d["allowed"]) == [
        i * ESTIMATE for i in range(10)
    ]
    assert {d["reason"] for d in decisions if not d["allowed"]} == {"spending_limit_reached"}
