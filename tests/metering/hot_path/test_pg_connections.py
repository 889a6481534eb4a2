"""PostgreSQL connections of the one-statement decision: dropped ones are replaced, commits are asynchronous.

Connections are really closed by the server (``pg_terminate_backend``), not simulated.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import make_url, text

from metering.authorize.catalog import provider_catalog
from metering.authorize.service import AuthorizeRequest, authorize_service, statement_arguments
from metering.db import Database
from metering.errors import ServiceUnavailable
from metering.hot_path import pg_connections
from metering.hot_path.pg_connections import APPLICATION_NAME, decision_connections
from metering.hot_path.pg_decision import pg_decision_repository
from metering.periods import utcnow
from tests.metering.authorize.helpers import ESTIMATE, period_row, seed
from tests.support.servers import free_port

REQUEST = AuthorizeRequest(user="alice", bill_to=None, provider="together", model="org/m")


@pytest.fixture
async def pg_db(db: Database, backend: str) -> Database:
    if backend != "postgres":
        pytest.skip("PostgreSQL connections")
    provider_catalog.clear()
    await seed(db)
    return db


async def decision_backends(db: Database) -> set[int]:
    """Server process ids of the decision's own connections to the test database (all engines')."""
    async with db.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = :name"),
            {"name": APPLICATION_NAME},
        )
        return {pid for (pid,) in rows}


async def eventually(check, seconds: float = 5.0) -> bool:
    """Backends exit a moment after their connection closes: poll ``check`` until it holds."""
    for _ in range(int(seconds / 0.05)):
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


async def terminate(database_url: str, pids: list[int]) -> None:
    admin = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    finally:
        await admin.close()


async def decide_at_once(db: Database, count: int) -> list[bool]:
    return [
        d.allowed
        for d in await asyncio.gather(*(authorize_service.authorize(db, request=REQUEST) for _ in range(count)))
    ]


async def test_connections_closed_while_pooled_are_replaced(pg_db: Database, database_url: str) -> None:
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed  # the period row, step by step
    assert await decide_at_once(pg_db, 4) == [True] * 4
    pids = await decision_backends(pg_db)
    assert pids
    await terminate(database_url, list(pids))
    await asyncio.sleep(0.2)  # the pooled connections see their sockets close
    decisions = [await authorize_service.authorize(pg_db, request=REQUEST) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 6
    assert (await period_row(pg_db, "alice")).held_nano_usd == 11 * ESTIMATE
    assert not pids & await decision_backends(pg_db)


async def test_a_connection_lost_mid_use_is_not_pooled_again(
    pg_db: Database, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after checkout: the decision fails as unavailable (503), the next ones work.

    A hook on timing only: the fault itself (a backend closed by the server) is real.
    """
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed
    connections = decision_connections(pg_db.engine)
    checkout = connections.acquire
    terminated: list[int] = []

    async def acquire_then_terminate():
        connection = await checkout()
        terminated.append(connection.get_server_pid())
        await terminate(database_url, terminated[-1:])
        await asyncio.sleep(0.2)
        return connection

    monkeypatch.setattr(connections, "acquire", acquire_then_terminate)
    with pytest.raises(ServiceUnavailable):
        await pg_decision_repository.decide(pg_db.engine, **statement_arguments(REQUEST, utcnow()))
    monkeypatch.undo()
    assert [(await authorize_service.authorize(pg_db, request=REQUEST)).allowed for _ in range(3)] == [True] * 3
    assert terminated[0] not in await decision_backends(pg_db)
    assert (await period_row(pg_db, "alice")).held_nano_usd == 4 * ESTIMATE


async def test_at_most_the_pool_size_in_use(pg_db: Database, database_url: str) -> None:
    """64 decisions at once on an engine of pool size 3: they queue for 3 connections, and all are decided."""
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed
    before = await decision_backends(pg_db)
    small = Database(database_url, pool_size=3)
    try:
        assert await decide_at_once(small, 64) == [True] * 64
        assert len(await decision_backends(pg_db) - before) == 3
    finally:
        await small.dispose()
    assert (await period_row(pg_db, "alice")).held_nano_usd == 65 * ESTIMATE


async def test_dispose_closes_them_and_a_later_use_reopens(pg_db: Database, database_url: str) -> None:
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed
    other = Database(database_url)
    try:
        before = await decision_backends(pg_db)
        assert await decide_at_once(other, 4) == [True] * 4
        opened = await decision_backends(pg_db) - before
        assert opened
        await other.dispose()

        async def closed() -> bool:
            return not opened & await decision_backends(pg_db)

        assert await eventually(closed)
        assert (await authorize_service.authorize(other, request=REQUEST)).allowed
        assert len(await decision_backends(pg_db) - before - opened) == 1
    finally:
        await other.dispose()


async def test_an_unreachable_database_is_unavailable(pg_db: Database, database_url: str) -> None:
    """No server at the URL: 503 ask-again, not a 500."""
    url = make_url(database_url).set(port=free_port()).render_as_string(hide_password=False)
    unreachable = Database(url)
    try:
        with pytest.raises(ServiceUnavailable):
            await pg_decision_repository.decide(unreachable.engine, **statement_arguments(REQUEST, utcnow()))
    finally:
        await unreachable.dispose()


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


async def test_connections_past_the_recycle_age_are_replaced(pg_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed
    first = await decision_backends(pg_db)
    monkeypatch.setattr(pg_connections, "POOL_RECYCLE_SECONDS", -1)
    assert (await authorize_service.authorize(pg_db, request=REQUEST)).allowed

    async def replaced() -> bool:
        now = await decision_backends(pg_db)
        return len(now) == len(first) and not now & first

    assert await eventually(replaced)
    assert (await period_row(pg_db, "alice")).held_nano_usd == 3 * ESTIMATE
