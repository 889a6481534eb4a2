"""Engine and session factories; ``session_scope`` is the one place a use case commits.

Behind PgBouncer in transaction mode (``METERING_DATABASE_PGBOUNCER=true``) each transaction
may run on another server connection, so nothing may outlive one: no prepared statement is
kept (each is unnamed and sent again with its arguments, as asyncpg does with its statement
cache off) and the statement timeout is set at the start of each transaction rather than
once per connection (PgBouncer refuses settings in the startup message).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar, cast

from sqlalchemy import Table, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from metering.config import get_settings
from metering.errors import StatementTimeout
from metering.models.base import Base

T = TypeVar("T")

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
# SQLSTATE query_canceled: the server cancelled the statement, at its statement_timeout (or
# by pg_cancel_backend); the transaction is rolled back and the connection stays usable.
QUERY_CANCELED = "57014"
STATEMENT_TIMEOUT_DETAIL = (
    "the query took too long and was cancelled; ask for less (a shorter range, a smaller page) or try again later"
)

# The settings each PostgreSQL engine's connections open with, for connections opened beside
# its pool (``metering.hot_path.pg_connections``), which must run under the same ones.
_server_settings: weakref.WeakKeyDictionary[Engine, dict[str, str]] = weakref.WeakKeyDictionary()
# The same settings of each engine behind PgBouncer, set at the start of each transaction instead.
_transaction_settings: weakref.WeakKeyDictionary[Engine, dict[str, str]] = weakref.WeakKeyDictionary()
# What asyncpg and SQLAlchemy's adapter are told behind PgBouncer: no statement cache, unnamed statements.
PGBOUNCER_CONNECT_ARGS = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}


def _unnamed_statement() -> str:
    """The name of each statement SQLAlchemy prepares behind PgBouncer: none. An unnamed statement lives
    until the next one on its server connection, and with the cache off asyncpg sends it again at
    execution, so it runs on whichever server connection PgBouncer picks."""
    return ""


def create_engine(
    database_url: str, *, pool_size: int = 10, statement_timeout_ms: int | None = None, pgbouncer: bool = False
) -> AsyncEngine:
    """An engine for SQLite (WAL, serialized writers) or PostgreSQL (asyncpg).

    On PostgreSQL every connection opens with ``statement_timeout`` set to
    ``statement_timeout_ms`` (None: the server's own, usually none); with ``pgbouncer``, every
    transaction starts with ``SET LOCAL statement_timeout`` instead, and no statement is prepared
    beyond its transaction. SQLite has no such setting; its statements are bounded by what the
    callers may ask for.
    """
    if statement_timeout_ms is not None and statement_timeout_ms < 1:
        # PostgreSQL reads 0 as "no timeout": None says that, 0 is a mistake.
        raise ValueError(f"statement_timeout_ms must be at least 1 (or None), got {statement_timeout_ms}")
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _serialize_sqlite_writers(engine)
        return engine
    # Sent in the connection's startup message: no round trip of its own, and set before any statement.
    settings = {} if statement_timeout_ms is None else {"statement_timeout": str(statement_timeout_ms)}
    connect_args: dict[str, object] = {"server_settings": settings} if settings else {}
    if pgbouncer:
        connect_args = {**PGBOUNCER_CONNECT_ARGS, "prepared_statement_name_func": _unnamed_statement}
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=POOL_RECYCLE_SECONDS, connect_args=connect_args
    )
    if pgbouncer:
        _transaction_settings[engine.sync_engine] = settings
        _set_locally_in_each_transaction(engine, settings)
    else:
        _server_settings[engine.sync_engine] = settings
    _skip_closed_connections(engine)
    return engine


def server_settings(engine: AsyncEngine | Engine) -> dict[str, str]:
    """The PostgreSQL settings (e.g. ``statement_timeout``) that ``engine``'s connections open with."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return dict(_server_settings.get(sync_engine, {}))


def pgbouncer_settings(engine: AsyncEngine | Engine) -> dict[str, str] | None:
    """Behind PgBouncer, the settings each transaction of ``engine`` sets locally (``SET LOCAL``); else None."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    settings = _transaction_settings.get(sync_engine)
    return None if settings is None else dict(settings)


def set_local_statement(settings: dict[str, str]) -> str:
    """``SET LOCAL`` of each of ``settings`` (names and values from this module, never from a caller)."""
    return "; ".join(f"SET LOCAL {name} = {int(value)}" for name, value in settings.items())


def _set_locally_in_each_transaction(engine: AsyncEngine, settings: dict[str, str]) -> None:
    """Behind PgBouncer: ``settings`` set at the start of each transaction, where they end with it."""
    if not settings:
        return
    statement = set_local_statement(settings)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(statement)


def statement_timeout_of(error: BaseException) -> StatementTimeout | None:
    """``StatementTimeout`` when ``error`` is a statement the server cancelled, else None.

    ``error`` may be asyncpg's ``QueryCanceledError`` or SQLAlchemy's ``DBAPIError`` around
    it; the cause chain is followed, so a wrapped one is found as well.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) == QUERY_CANCELED:
            return StatementTimeout(STATEMENT_TIMEOUT_DETAIL)
        current = getattr(current, "orig", None) or current.__cause__
    return None


def _skip_closed_connections(engine: AsyncEngine) -> None:
    """A pooled PostgreSQL connection the server closed is replaced at checkout, for free.

    Instead of ``pool_pre_ping`` (three round trips per checkout with asyncpg: BEGIN,
    a ping, ROLLBACK, which cost more than an authorize decision): the driver learns of
    a closed socket (server restart, ``pg_terminate_backend``) while the connection idles
    in the pool, and the pool discards it here and opens another. A connection that dies
    while in use fails that one use case and is invalidated by SQLAlchemy (with its
    pool-mates of the same age). The authorize decision keeps connections of its own
    (``metering.hot_path.pg_connections``), with the same rules.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(
        dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
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
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def by_dialect(session: AsyncSession, *, sqlite: T, postgresql: T) -> T:
    """Of two implementations, the one for the engine ``session`` runs on.

    The one question of which engine runs: each concept keeps the SQL that differs between
    SQLite and PostgreSQL behind a small interface in its ``dialects`` module, with both
    implementations side by side, and picks one here; nothing else asks.
    """
    if session.bind is None:
        raise exc.UnboundExecutionError("the session is not bound to an engine")
    return _pick(session.bind.dialect.name, sqlite=sqlite, postgresql=postgresql)


def _pick(name: str, *, sqlite: T, postgresql: T) -> T:
    if name == "sqlite":
        return sqlite
    if name == "postgresql":
        return postgresql
    raise exc.ArgumentError(f"unsupported database engine {name!r}: SQLite and PostgreSQL are")


def upsert_insert(session: AsyncSession, table: type[Base] | Table) -> sqlite.Insert | postgresql.Insert:
    """INSERT with ON CONFLICT support, in the session's dialect (the two constructs share that API)."""
    # Each construct is its dialect's Insert; the pick is typed as their common base.
    return cast(
        "sqlite.Insert | postgresql.Insert", by_dialect(session, sqlite=sqlite_insert, postgresql=pg_insert)(table)
    )


class Database:
    """Holds the engine and the session factory of one process; built at startup, never at import.

    ``statement_timeout_ms`` bounds every PostgreSQL statement of the process (the API, the
    jobs and exports each have their own setting in ``metering.config``). ``pool_size`` and
    ``pgbouncer`` default to the settings' ``database_pool_size`` and ``database_pgbouncer``.
    """

    def __init__(
        self,
        database_url: str,
        *,
        pool_size: int | None = None,
        statement_timeout_ms: int | None = None,
        pgbouncer: bool | None = None,
    ) -> None:
        if pool_size is None or pgbouncer is None:
            settings = get_settings()
            pool_size = settings.database_pool_size if pool_size is None else pool_size
            pgbouncer = settings.database_pgbouncer if pgbouncer is None else pgbouncer
        self.url = database_url
        self.pool_size = pool_size
        self.statement_timeout_ms = statement_timeout_ms
        self.engine = create_engine(
            database_url, pool_size=pool_size, statement_timeout_ms=statement_timeout_ms, pgbouncer=pgbouncer
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        # Set by ``with_statement_timeout``: each transaction of ``session_scope`` runs under it.
        self._transaction_timeout_ms: int | None = None

    def with_statement_timeout(self, statement_timeout_ms: int) -> Database:
        """This database, with every ``session_scope`` transaction under ``statement_timeout_ms`` instead.

        For a use case that may outlast the process's own timeout, such as an export streamed
        by the API: on PostgreSQL each transaction starts with ``SET LOCAL statement_timeout``,
        which ends with it, so the pooled connections keep the process's timeout. The engine
        and its pool are shared: dispose of the original, not of this.
        """
        if statement_timeout_ms < 1:
            raise ValueError(f"statement_timeout_ms must be at least 1, got {statement_timeout_ms}")
        other = copy.copy(self)
        other.statement_timeout_ms = other._transaction_timeout_ms = statement_timeout_ms
        return other

    @asynccontextmanager
    async def session_scope(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commits when the block ends, rolls back when it raises.

        A statement the server cancelled at its timeout raises ``StatementTimeout``.
        """
        async with self.sessionmaker() as session:
            try:
                async with session.begin():
                    if self._transaction_timeout_ms is not None and self.by_dialect(sqlite=False, postgresql=True):
                        await session.execute(
                            text(f"SET LOCAL statement_timeout = {int(self._transaction_timeout_ms)}")
                        )
                    yield session
            except exc.DBAPIError as error:
                timeout = statement_timeout_of(error)
                if timeout is None:
                    raise
                raise timeout from error

    @property
    def dialect(self) -> str:
        """The engine's name, for people (``/healthz``, logs); code picks with ``by_dialect``."""
        return self.engine.dialect.name

    def by_dialect(self, *, sqlite: T, postgresql: T) -> T:
        """Of two implementations, the one for this database's engine (see the function ``by_dialect``)."""
        return _pick(self.engine.dialect.name, sqlite=sqlite, postgresql=postgresql)

    async def dispose(self) -> None:
        await self.engine.dispose()
