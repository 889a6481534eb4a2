"""Helpers the repositories share: long lists cut into statements, one SQLite statement in one driver call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy.exc import InvalidRequestError

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult, Result
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T", bound=Sequence[Any])

# Rows per multi-row statement: stays under the 32,767 bind parameters of asyncpg and SQLite.
ROWS_PER_STATEMENT = 2_000


def chunks(items: T, size: int = ROWS_PER_STATEMENT) -> Iterator[T]:
    """``items`` in consecutive slices of at most ``size``: one statement each, under the bind-parameter limits."""
    for start in range(0, len(items), size):
        # A slice of a list is a list, of a tuple a tuple: the caller's own type.
        yield cast(T, items[start : start + size])


def rowcount(result: Result[*tuple[Any, ...]]) -> int:
    """The number of rows an UPDATE or DELETE matched (executing one gives a ``CursorResult``)."""
    return cast("CursorResult[*tuple[Any, ...]]", result).rowcount


async def sqlite_fetchall(session: AsyncSession, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
    """Run one statement of the session's transaction on the aiosqlite driver's connection and fetch its rows.

    aiosqlite runs a connection's calls on a thread of its own. Through SQLAlchemy's adapter a
    statement is four calls there (open a cursor, execute, fetch, close), each waking that thread
    and then the event loop; this is one, which on a busy machine saves milliseconds a statement.
    """
    connection = await session.connection()
    driver_connection = (await connection.get_raw_connection()).driver_connection
    if driver_connection is None:
        raise InvalidRequestError("the session's connection is closed")
    rows: list[tuple[Any, ...]] = await driver_connection.execute_fetchall(sql, params)
    return rows
