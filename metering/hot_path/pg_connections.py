"""The PostgreSQL connections of the one-statement decision: a small pool of their own, per engine.

The engine's pool costs the hot path about as much CPU as the statement's own client
work: a checkout and a checkin each cross SQLAlchemy's greenlet bridge and run its
checkout and reset-on-return hooks. These connections only ever run ``DECIDE`` in
autocommit, so none of that is needed: a list of idle connections and a cap.

- at most the engine's pool size in use at once (a waiter queues here rather than
  opening a connection, a PostgreSQL backend, per request);
- opened on demand, reused last in first out (the one with the warmest statement cache);
- an idle connection the server closed (restart, ``pg_terminate_backend``) is skipped
  for free: the driver notices the closed socket while it idles; one older than the
  engine's recycle age is replaced, as the engine's own are;
- a connection whose use failed other than by its statement is dropped, never reused;
- they open with the engine's own server settings (``metering.db.server_settings``), so the
  decision runs under the same ``statement_timeout`` as every other statement of the process;
  behind PgBouncer (``metering.db.pgbouncer_settings``) they keep no prepared statement and the
  decision runs in a transaction that sets them locally first (``begin``);
- all are closed when the engine is disposed, and a new set opens if it is used again.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util.concurrency import await_, in_greenlet

from metering.db import (
    PGBOUNCER_CONNECT_ARGS,
    POOL_RECYCLE_SECONDS,
    pgbouncer_settings,
    server_settings,
    set_local_statement,
)
from metering.errors import ServiceUnavailable

# Keyword arguments of SQLAlchemy's asyncpg adapter that asyncpg.connect does not take.
_ADAPTER_ONLY = ("async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func")
# The statement's plan does not depend on its arguments (primary-key lookups, a few small
# tables): a generic plan from the first execution, rather than five custom plannings first.
_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
# How these connections show in ``pg_stat_activity``, unless the URL names the application.
APPLICATION_NAME = "metering-authorize"
CLOSE_TIMEOUT_SECONDS = 2.0
# A connection that cannot be opened now but may be in a moment: the caller is told to ask again (503).
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
)


class DecisionConnections:
    def __init__(
        self, connect: Callable[[], Awaitable[asyncpg.Connection]], size: int, *, begin: str | None = None
    ) -> None:
        self._connect = connect
        # Behind PgBouncer: what opens the decision's transaction (settings can only be set in one); else None.
        self.begin = begin
        self._slots = asyncio.Semaphore(size)
        self._idle: list[asyncpg.Connection] = []
        self._opened_at: dict[asyncpg.Connection, float] = {}
        self._closed = False

    async def acquire(self) -> asyncpg.Connection:
        """A connection for one statement; give it back with ``release`` or ``discard``."""
        await self._slots.acquire()
        try:
            while self._idle:
                connection = self._idle.pop()
                if connection.is_closed() or time.monotonic() - self._opened_at[connection] > POOL_RECYCLE_SECONDS:
                    self._drop(connection)  # closed by the server, or old enough to be cut by a firewall unnoticed
                else:
                    return connection
            try:
                connection = await self._connect()
            except _UNREACHABLE as error:
                raise ServiceUnavailable("the database cannot be reached; ask again") from error
            self._opened_at[connection] = time.monotonic()
            return connection
        except BaseException:
            self._slots.release()
            raise

    def release(self, connection: asyncpg.Connection) -> None:
        """Back to the idle list: its statement ran or failed, and its transaction is over."""
        if self._closed or connection.is_closed() or connection.is_in_transaction():
            self._drop(connection)
        else:
            self._idle.append(connection)
        self._slots.release()

    def discard(self, connection: asyncpg.Connection) -> None:
        """Drop a connection whose state is unknown (lost, or cancelled mid-statement)."""
        self._drop(connection)
        self._slots.release()

    def _drop(self, connection: asyncpg.Connection) -> None:
        self._opened_at.pop(connection, None)
        connection.terminate()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._opened_at.pop(connection, None)
            try:
                await connection.close(timeout=CLOSE_TIMEOUT_SECONDS)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                connection.terminate()

    def terminate(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._drop(connection)


_by_engine: weakref.WeakKeyDictionary[Engine, DecisionConnections] = weakref.WeakKeyDictionary()


def decision_connections(engine: AsyncEngine) -> DecisionConnections:
    """The decision's connections to ``engine``'s database, sized like its pool."""
    sync_engine = engine.sync_engine
    connections = _by_engine.get(sync_engine)
    if connections is None:
        connections = _by_engine[sync_engine] = _open(sync_engine)
    return connections


def _open(sync_engine: Engine) -> DecisionConnections:
    _args, options = sync_engine.dialect.create_connect_args(sync_engine.url)
    for name in _ADAPTER_ONLY:
        options.pop(name, None)
    size = getattr(sync_engine.pool, "size", lambda: 10)()
    if not event.contains(sync_engine, "engine_disposed", _close_on_dispose):
        event.listen(sync_engine, "engine_disposed", _close_on_dispose)
    local = pgbouncer_settings(sync_engine)
    if local is not None:
        # PgBouncer takes only a few settings at start-up (the application's name among them); the
        # generic plan needs a statement kept prepared, which nothing is behind it.
        settings = {"application_name": APPLICATION_NAME, **options.pop("server_settings", {})}
        options.update(statement_cache_size=PGBOUNCER_CONNECT_ARGS["statement_cache_size"])
        begin = "; ".join(["BEGIN", set_local_statement(local)]) if local else "BEGIN"
        return DecisionConnections(
            lambda: asyncpg.connect(**options, server_settings=settings), max(1, size), begin=begin
        )
    settings = {
        "application_name": APPLICATION_NAME,
        **options.pop("server_settings", {}),
        **server_settings(sync_engine),
        **_SERVER_SETTINGS,
    }
    return DecisionConnections(lambda: asyncpg.connect(**options, server_settings=settings), max(1, size))


def _close_on_dispose(sync_engine: Engine) -> None:
    """``AsyncEngine.dispose`` runs this in its greenlet, where the connections close gracefully."""
    connections = _by_engine.pop(sync_engine, None)
    if connections is None:
        return
    if in_greenlet():
        await_(connections.close())
    else:
        connections.terminate()
