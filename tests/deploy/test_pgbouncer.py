"""Metering behind PgBouncer in transaction mode (``METERING_DATABASE_PGBOUNCER=true``).

A real PgBouncer, started here as a non-root process on a free port in front of the local
PostgreSQL, with a pool of 2 server connections: Metering's many connections share them, so
consecutive transactions of one of its connections run on different server connections, and a
prepared statement or setting kept across transactions would fail or leak. Authorize on both
paths (the one statement, with first-of-period grants in batches, and step by step), ingest, a
cost collection and ``metering verify`` all run through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from api.app import create_app
from jobs import collect_costs
from jobs.scheduler import jobs_database
from metering.config import Settings, set_settings
from metering.db import Database
from metering.ledger.verify import verify
from simulator.server import simulator_in_thread
from tests.conftest import SERVICE_TOKEN, make_settings
from tests.factories.accounts import add_member, create_account
from tests.factories.providers import create_provider
from tests.support.pgbouncer import PGBOUNCER, REQUIRE_PGBOUNCER, pgbouncer, through

POOL = 2  # PgBouncer's server connections: fewer than Metering opens
ESTIMATE = 100_000


@pytest.fixture(scope="module")
def bouncer_port() -> Iterator[int]:
    if PGBOUNCER is None:
        if REQUIRE_PGBOUNCER:
            pytest.fail("PgBouncer is required (METERING_TEST_REQUIRE_PGBOUNCER=1) but pgbouncer is not installed")
        pytest.skip("pgbouncer is not installed (Debian's pgbouncer package; .ci/run installs it)")
    with pgbouncer(pool_size=POOL) as port:
        yield port


@pytest.fixture
async def bounced(
    backend: str, database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Settings, Database, Database, str]]:
    """Settings naming PgBouncer, the API's and the jobs' databases through it, and the direct URL of
    the same database."""
    if backend != "postgres":
        pytest.skip("PgBouncer pools PostgreSQL connections")
    url = through(database_url, request.getfixturevalue("bouncer_port"))
    settings = make_settings(url, tmp_path, database_pgbouncer=True)
    set_settings(settings)
    api = Database(url, statement_timeout_ms=settings.api_statement_timeout_ms)
    jobs = jobs_database(url)
    try:
        yield settings, api, jobs, database_url
    finally:
        await api.dispose()
        await jobs.dispose()
        set_settings(None)


async def _server_connections(direct_url: str) -> int:
    """PostgreSQL's client backends on the test database, this probe's own aside."""
    connection = await asyncpg.connect(direct_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await connection.close()


async def test_every_transaction_runs_under_the_statement_timeout(
    bounced: tuple[Settings, Database, Database, str],
) -> None:
    _, api, jobs, _ = bounced
    for database, expected in ((api, "5s"), (jobs, "2min")):
        for _ in range(2 * POOL):  # on whichever server connection PgBouncer picks
            async with database.session_scope() as session:
                assert await session.scalar(text("SHOW statement_timeout")) == expected


async def test_authorize_ingest_and_collection(bounced: tuple[Settings, Database, Database, str]) -> None:
    settings, api, jobs, direct_url = bounced
    users = [f"user{i:02d}" for i in range(20)]
    with simulator_in_thread(seed=7) as simulator:
        async with api.session_scope() as session:
            await create_provider(session, "sim", url=simulator.base_url, default_estimate_nano_usd=ESTIMATE)
            await create_account(session, "acme", plan="team", seats=2)
            for user in users:
                await create_account(session, user, plan="pro")
                await add_member(session, org="acme", user=user)
        app = create_app(settings, database=api)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://metering.test",
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        ) as client:
            # At once: first calls of the period (one statement, their grants in batches), calls billed to
            # the org, and unknown users (step by step: created on the free plan); then every one again, warm.
            requests = [{"user": u, "bill_to": None} for u in users]
            requests += [{"user": u, "bill_to": "acme"} for u in users[:10]]
            requests += [{"user": f"newcomer{i}", "bill_to": None} for i in range(10)]
            answers = []
            for _ in range(2):
                answers += await asyncio.gather(
                    *(
                        client.post("/internal/v1/authorize", json={**r, "provider": "sim", "model": "org/m"})
                        for r in requests
                    )
                )
            assert [a.status_code for a in answers] == [200] * len(answers)
            decisions = [a.json() for a in answers]
            assert all(d["allowed"] and d["hold_id"] for d in decisions), decisions
            assert await _server_connections(direct_url) <= POOL

            started = datetime.now(UTC).isoformat()
            records = [
                {
                    "request_id": f"req-{n:03d}",
                    "provider": "sim",
                    "user": request["user"],
                    "bill_to": request["bill_to"],
                    "model": "org/m",
                    "started_at": started,
                    "hold_id": decision["hold_id"],
                }
                for n, (request, decision) in enumerate(zip(requests * 2, decisions))
            ]
            ingest = await client.post("/internal/v1/usage", json={"records": records})
            assert ingest.json() == {"accepted": len(records), "duplicates": 0, "rejected": []}

        simulator.preload(costs={record["request_id"]: 150_000 for record in records})
        summary = await collect_costs.run_once(jobs)
        assert f"priced={len(records)}" in summary

    async with api.session_scope() as session:
        statuses = await session.execute(text("SELECT status, count(*) FROM usage_records GROUP BY status"))
        assert dict(statuses.all()) == {"priced": len(records)}
    report = await verify(api)
    assert report.ok, [line for check in report.checks for line in check.breaches]
    assert await _server_connections(direct_url) <= POOL
