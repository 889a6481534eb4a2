"""Engine and session factories; ``session_scope`` is the one place a use case commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Set on every SQLite connection, in this order (see ``_serialize_sqlite_writers`` for why).
SQLITE_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "foreign_keys=ON",
    f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "cache_size=-65536",  # KiB: 64 MiB per connection, allocated as pages are used
    "mmap_size=268435456",  # 256 MiB of the database file read through the OS page cache, without copies
    "temp_store=MEMORY",
    "wal_autocheckpoint=8192",  # pages: checkpoint once the WAL holds ~32 MiB
    "journal_size_limit=67108864",  # bytes: a checkpointed WAL is truncated back to 64 MiB
)
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
    while in use fails that one use case and is invalidated by SQLAlchemy (with its
    pool-mates of the same age). The authorize decision keeps connections of its own
    (``metering.authorize.pg_connections``), with the same rules.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection, _record, _proxy) -> None:  # noqa: ANN001
        if dbapi_connection.driver_connection.is_closed():
            raise exc.DisconnectionError("connection closed by the server while pooled")


def _serialize_sqlite_writers(engine: AsyncEngine) -> None:
    """Every SQLite transaction starts with BEGIN IMMEDIATE, on a connection set up by ``SQLITE_PRAGMAS``.

    SQLite has one writer at a time; taking the write lock at BEGIN (rather than at
    the first write, which can fail with SQLITE_BUSY mid-transaction) makes each
    use case a serialized critical section, the SQLite equivalent of a row lock.

    WAL with ``synchronous=NORMAL``: a commit is a write to the WAL without an fsync;
    the WAL is synced at each checkpoint. A crash of the process loses nothing
    committed, and no crash corrupts the database; only a power loss or OS crash can
    roll back the transactions committed since the last checkpoint. That is the
    embedded default's trade (one process on one machine; production runs on
    PostgreSQL), against a disk flush in every use case with ``synchronous=FULL``.
    A 1,000-record batch dirties a page of each per-account index per account it
    names, ~3,000 pages, so with SQLite's default 1,000-page checkpoint every commit
    checkpointed and synced; at 8,192 pages checkpoints come every few batches and
    write each hot page once for all of them. The page cache holds a batch's dirty
    pages without spilling them mid-transaction, and reads of the file go through
    ``mmap`` (a connection's cache is dropped whenever another connection committed).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
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
        self.pool_size = pool_size
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
