"""Helpers the repositories share: long lists cut into statements, one SQLite statement in one driver call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T", bound=Sequence)

# Rows per multi-row statement: stays under the 32,767 bind parameters of asyncpg and SQLite.
ROWS_PER_STATEMENT = 2_000


def chunks(items: T, size: int = ROWS_PER_STATEMENT) -> Iterator[T]:
    """``items`` in consecutive slices of at most ``size``: one statement each, under the bind-parameter limits."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def sqlite_fetchall(session: AsyncSession, sql: str, params: Sequence[object]) -> list[tuple]:
    """Run one statement of the session's transaction on the aiosqlite driver's connection and fetch its rows.

    aiosqlite runs a connection's calls on a thread of its own. Through SQLAlchemy's adapter a
    statement is four calls there (open a cursor, execute, fetch, close), each waking that thread
    and then the event loop; this is one, which on a busy machine saves milliseconds a statement.
    """
    connection = await session.connection()
    driver_connection = (await connection.get_raw_connection()).driver_connection
    return await driver_connection.execute_fetchall(sql, params)
