"""Engine and session factories; ``session_scope`` is the one place a use case commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL connections are replaced after this long, before idle timeouts of
# firewalls or poolers can cut them unnoticed.
POOL_RECYCLE_SECONDS = 1800


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for SQLite (WAL, serialized writers) or PostgreSQL (asyncpg)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _serialize_sqlite_writers(engine)
        return engine
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=POOL_RECYCLE_SECONDS)
    _skip_closed_connections(engine)
    return engine


def _skip_closed_connections(engine: AsyncEngine) -> None:
    """A pooled PostgreSQL connection the server closed is replaced at checkout, for free.

    Instead of ``pool_pre_ping`` (three round trips per checkout with asyncpg: BEGIN,
    a ping, ROLLBACK, which cost more than an authorize decision): the driver learns of
    a closed socket (server restart, ``pg_terminate_backend``) while the connection idles
    in the pool, and the pool discards it here and opens another. A connection that dies
    while in use fails that one use case and is invalidated: by SQLAlchemy (with its
    pool-mates of the same age), or by ``metering.authorize.pg_decision`` for its raw
    statement.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection, _record, _proxy) -> None:  # noqa: ANN001
        if dbapi_connection.driver_connection.is_closed():
            raise exc.DisconnectionError("connection closed by the server while pooled")


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """Every SQLite transaction starts with BEGIN IMMEDIATE.

    SQLite has one writer at a time; taking the write lock at BEGIN (rather than at
    the first write, which can fail with SQLITE_BUSY mid-transaction) makes each
    use case a serialized critical section, the SQLite equivalent of a row lock.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection) -> None:  # noqa: ANN001
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(session_or_engine: AsyncSession | AsyncEngine) -> bool:
    bind = session_or_engine.bind if isinstance(session_or_engine, AsyncSession) else session_or_engine
    return bind.dialect.name == "sqlite"


class Database:
    """Holds the engine and the session factory of one process; built at startup, never at import."""

    def __init__(self, database_url: str, *, pool_size: int = 10) -> None:
        self.url = database_url
        self.engine = create_engine(database_url, pool_size=pool_size)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def session_scope(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commits when the block ends, rolls back when it raises."""
        async with self.sessionmaker() as session:
            async with session.begin():
                yield session

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def dispose(self) -> None:
        await self.engine.dispose()
