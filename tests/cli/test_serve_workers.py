"""``metering serve --workers 2`` on PostgreSQL: two processes, each with its own pools, decide on one
database as one process would: a burst against a spending limit allows exactly what fits, and the
first calls of a period grant each account's credits once."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.serve import connection_budget
from metering.db import Database
from metering.ledger import codes
from metering.ledger.verify import verify
from metering.limits.service import limits_service
from metering.periods import current_period
from tests.metering.ledger.helpers import transactions
from tests.support.servers import metering_server

TOKEN = "workers-service-token"
ESTIMATE = 1_000_000


@pytest.fixture
def two_workers(backend: str, database_url: str, tmp_path: Path) -> Iterator[str]:
    if backend != "postgres":
        pytest.skip("many API processes share one database on PostgreSQL")
    env = {
        "METERING_ENVIRONMENT": "embedded",
        "METERING_DATA_DIR": str(tmp_path),
        "METERING_DATABASE_URL": database_url,
        "METERING_SERVICE_TOKENS": TOKEN,
        "METERING_SECRET_KEY": base64.urlsafe_b64encode(b"w" * 32).decode(),
        "METERING_JWT_SECRET": "workers-jwt-secret-long-enough-for-hs256",
        "METERING_DATABASE_POOL_SIZE": "4",
    }
    with metering_server(env, workers=2) as base_url:
        yield base_url


async def _setup(client: httpx.AsyncClient) -> None:
    registration = {
        "url": "http://127.0.0.1:9",
        "pricing": "cost_endpoint",
        "cost_endpoint": "http://127.0.0.1:9/billing/costs",
        "cost_token": "provider-token",
        "default_estimate_nano_usd": ESTIMATE,
    }
    (await client.put("/internal/v1/providers/together", json=registration)).raise_for_status()
    (
        await client.put("/internal/v1/accounts/capped", json={"kind": "org", "plan": "team", "seats": 0})
    ).raise_for_status()
    (await client.put("/internal/v1/orgs/capped/members/alice", json={"role": "write"})).raise_for_status()
    for i in range(64):
        (
            await client.put(f"/internal/v1/accounts/user{i:02d}", json={"kind": "user", "plan": "pro"})
        ).raise_for_status()


async def test_a_burst_against_a_spending_limit_allows_exactly_what_fits(two_workers: str, db: Database) -> None:
    async with httpx.AsyncClient(
        base_url=two_workers, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    ) as client:
        await _setup(client)
        async with db.session_scope() as session:
            await limits_service.set_spending_limit(
                session, account_name="capped", limit_nano_usd=10 * ESTIMATE, actor="test-admin"
            )
        burst = {"user": "alice", "bill_to": "capped", "provider": "together", "model": "org/m"}
        answers = await asyncio.gather(*(client.post("/internal/v1/authorize", json=burst) for _ in range(64)))
        decisions = [a.json() for a in answers]
        assert sum(d["allowed"] for d in decisions) == 10
        assert {d["reason"] for d in decisions if not d["allowed"]} == {"spending_limit_reached"}

        first_calls = await asyncio.gather(
            *(
                client.post(
                    "/internal/v1/authorize",
                    json={"user": f"user{i:02d}", "bill_to": None, "provider": "together", "model": "org/m"},
                )
                for i in range(64)
            )
        )
        assert [a.json()["credits_remaining_nano_usd"] for a in first_calls] == [2_000_000_000 - ESTIMATE] * 64

    async with db.session_scope() as session:
        keys = [t.idempotency_key for t in await transactions(session, kind=codes.GRANT, period=current_period())]
    assert sorted(keys) == sorted([f"grant:user{i:02d}:{current_period()}" for i in range(64)])
    report = await verify(db)
    assert report.ok, [line for check in report.checks for line in check.breaches]


def test_serve_names_the_connections_its_workers_may_open() -> None:
    assert connection_budget(2, 4, pgbouncer=False) == (
        "2 worker process(es), each with its own pools: at most 12 connections to PostgreSQL per process, "
        "24 in all (METERING_DATABASE_POOL_SIZE=4)"
    )
