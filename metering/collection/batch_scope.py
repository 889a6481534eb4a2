"""Where the steps of one collection batch run, and so what its lease is.

On PostgreSQL the claim, the wait for the provider and the apply share one transaction:
rows are claimed with ``FOR UPDATE SKIP LOCKED`` and those row locks are the lease. A claim
then writes nothing (a lease written on every row was a non-HOT update of the whole batch,
a quarter of its time); a worker that dies loses its locks with its connection; one that
stalls is ended by the server once it has been idle in the transaction for
``cost_lease_seconds`` (``idle_in_transaction_session_timeout``), which frees its rows for
the next worker, and its own next statement fails as ``LeaseLost``.

SQLite has one writer at a time, so no transaction may stay open while a provider is asked:
each step is a transaction of its own and the lease is written on the rows (owner, expiry).
PostgreSQL does the same for a batch that finds every ``HeldSlots`` of its process taken: a
held batch keeps a pooled connection through its provider's answer, so with more providers
in flight than the pool has connections, the others write their lease rather than wait for
one (a slow provider must not delay the others). Both kinds of lease skip each other's rows.

A multi-transaction entry point: it opens and commits a batch's transactions itself, since
how many there are (one held, or one per step) is decided here, per engine and free slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from metering.collection.dialects import postgres_batch_leases, sqlite_batch_leases
from metering.db import Database

# SQLSTATE of a session the server ended for idling in a transaction past the timeout.
_IDLE_TIMEOUT_SQLSTATE = "25P03"


class LeaseLost(Exception):
    """The batch's transaction (its lease) ended before its commit: the server ended it, or its
    connection was lost; its rows are asked again (and stay priced once if a commit did land)."""


def _ended_by_server(error: DBAPIError) -> bool:
    """The session is gone (idle timeout or a lost connection), not a failed statement."""
    return error.connection_invalidated or getattr(error.orig, "sqlstate", None) == _IDLE_TIMEOUT_SQLSTATE


class BatchLeases(Protocol):
    """What an engine allows a batch's lease to be (``metering.collection.dialects``)."""

    # True: a batch may hold its rows locked in one transaction through its provider's answer.
    holds_rows: bool


class HeldSlots:
    """How many batches of one process may hold a connection through their provider's answer."""

    def __init__(self, limit: int) -> None:
        self.free = limit

    def take(self) -> bool:
        if self.free <= 0:
            return False
        self.free -= 1
        return True

    def give_back(self) -> None:
        self.free += 1


class BatchScope:
    """Sessions for a batch's steps: ``async with scope.step() as session`` for the claim, then
    ``scope.step(last=True)`` for the apply (or the failure). Held (PostgreSQL): every step
    shares the scope's one transaction, committed at the end of the last step and rolled back
    if the scope ends without one. Not held (SQLite, or no slot free): each step commits alone."""

    def __init__(self, database: Database, *, lease_seconds: int, slots: HeldSlots) -> None:
        self.database = database
        self.lease_seconds = lease_seconds
        self.slots = slots
        self.held = False
        # Set by the caller once it has claimed: the rows counted as lost if the lease ends first.
        self.rows_claimed = 0
        self._session: AsyncSession | None = None

    async def __aenter__(self) -> BatchScope:
        leases = self.database.by_dialect(sqlite=sqlite_batch_leases, postgresql=postgres_batch_leases)
        self.held = leases.holds_rows and self.slots.take()
        if self.held:
            self._session = self.database.sessionmaker()
            try:
                await self._session.begin()
                # SET LOCAL ends with the transaction: the pooled connection keeps no timeout.
                timeout_ms = int(self.lease_seconds * 1000)
                await self._session.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms}"))
            except BaseException as error:
                await self.__aexit__(type(error), error, error.__traceback__)
                raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        session, self._session = self._session, None
        if self.held:
            self.held = False
            self.slots.give_back()
        if session is not None:
            await session.close()  # rolls back a transaction the last step did not commit
        if isinstance(error, DBAPIError) and _ended_by_server(error):
            raise LeaseLost(str(error.orig)) from error
        return False

    @asynccontextmanager
    async def step(self, *, last: bool = False) -> AsyncIterator[AsyncSession]:
        if self._session is None:
            async with self.database.session_scope() as session:
                yield session
            return
        yield self._session
        if last:
            await self._session.commit()
