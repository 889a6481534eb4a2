"""PostgreSQL connections of the one-statement decision: dropped ones are replaced, commits are asynchronous.

Connections are really closed by the server (``pg_terminate_backend``), not simulated.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from metering.authorize.catalog import provider_catalog
from metering.authorize.pg_decision import pg_decision_repository
from metering.authorize.service import AuthorizeRequest, authorize_service, statement_arguments
from metering.db import Database
from metering.errors import ServiceUnavailable
from metering.periods import utcnow
from tests.metering.authorize.helpers import ESTIMATE, period_row, seed

REQUEST = AuthorizeRequest(user="alice", bill_to=None, provider="together", model="org/m")


@pytest.fixture
async def pg_db(db: Database, backend: str) -> Database:
    if backend != "postgres":
        pytest.skip("PostgreSQL connections")
    provider_catalog.clear()
    await seed(db)
    return db


async def backend_pids(db: Database, count: int) -> list[int]:
    """Check out ``count`` pooled connections at once and return their server process ids."""
    pooled = [await db.engine.raw_connection() for _ in range(count)]
    pids = [connection.driver_connection.get_server_pid() for connection in pooled]
    for connection in pooled:
        connection.close()
    return pids


async def terminate(database_url: str, pids: list[int]) -> None:
    admin = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    finally:
        await admin.close()


async def test_connections_closed_while_pooled_are_replaced(pg_db: Database, database_url: str) -> None:
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed  # the period row, step by step
    pids = await backend_pids(pg_db, 4)
    await terminate(database_url, pids)
    await asyncio.sleep(0.2)  # the pooled connections see their sockets close
    decisions = [await authorize_service.authorize(pg_db, request=REQUEST) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 6
    assert (await period_row(pg_db, "alice")).held_nano_usd == 7 * ESTIMATE
    assert not set(pids) & set(await backend_pids(pg_db, 4))


class TerminatedAfterCheckout:
    """The engine's pool, except that the checked-out connection's server process is terminated first.

    A hook on timing only: the fault itself (a backend closed by the server) is real.
    """

    def __init__(self, db: Database, database_url: str) -> None:
        self.db, self.database_url = db, database_url
        self.terminated: list[int] = []

    async def raw_connection(self):  # noqa: ANN201
        connection = await self.db.engine.raw_connection()
        self.terminated.append(connection.driver_connection.get_server_pid())
        await terminate(self.database_url, self.terminated[-1:])
        await asyncio.sleep(0.2)
        return connection


async def test_a_connection_lost_mid_use_is_not_pooled_again(pg_db: Database, database_url: str) -> None:
    """The connection dies after checkout: the decision fails as unavailable (503), the next ones work."""
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed
    engine = TerminatedAfterCheckout(pg_db, database_url)
    with pytest.raises(ServiceUnavailable):
        await pg_decision_repository.decide(engine, **statement_arguments(REQUEST, utcnow()))
    assert [(await authorize_service.authorize(pg_db, request=REQUEST)).allowed for _ in range(3)] == [True] * 3
    assert engine.terminated[0] not in await backend_pids(pg_db, 4)


async def test_an_allowed_decision_commits_without_waiting_for_the_flush(pg_db: Database) -> None:
    """Only a decision that holds an estimate turns ``synchronous_commit`` off, for its own transaction."""
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed
    pooled = await pg_db.engine.raw_connection()
    try:
        driver = pooled.driver_connection
        modes = []
        for request in (REQUEST, AuthorizeRequest(user="alice", bill_to=None, provider="nowhere", model="org/m")):
            async with driver.transaction():
                answer = await pg_decision_repository.decide_on(driver, **statement_arguments(request, utcnow()))
                modes.append((answer.outcome, await driver.fetchval("SHOW synchronous_commit")))
        modes.append(("after", await driver.fetchval("SHOW synchronous_commit")))
    finally:
        pooled.close()
    assert modes == [("allowed", "off"), ("unknown_provider", "on"), ("after", "on")]
