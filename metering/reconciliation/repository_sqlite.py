"""Staging a statement on SQLite: one ``executemany`` of a batch on the driver's connection.

Each batch is its own short transaction (``BEGIN IMMEDIATE``, the one writer lock), so ingest
waits for one batch at most, not for the whole upload.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from metering.reconciliation.errors import StagedTwice
from metering.reconciliation.statement import StatementLine

if TYPE_CHECKING:
    from metering.reconciliation.repository import ReconciliationSql

_INSERT_LINES = (
    "INSERT INTO reconciliation_lines (reconciliation_id, request_id, cost_nano_usd, line) VALUES (?, ?, ?, ?)"
)


class SqliteReconciliationSql:
    async def stage_lines(self, session: AsyncSession, reconciliation_id: int, lines: Sequence[StatementLine]) -> None:
        connection = await session.connection()
        driver_connection = (await connection.get_raw_connection()).driver_connection
        if driver_connection is None:
            raise InvalidRequestError("the session's connection is closed")
        rows = [(reconciliation_id, request_id, cost, line) for request_id, cost, line in lines]
        try:
            # One call on aiosqlite's thread for the whole batch (``metering.sql.sqlite_fetchall`` says why).
            await driver_connection.executemany(_INSERT_LINES, rows)
        except sqlite3.IntegrityError as exc:
            raise StagedTwice(str(exc)) from exc

    async def analyze_staged(self, session: AsyncSession) -> None:
        """Nothing: without statistics SQLite's planner already probes the primary keys (one row each)."""


SQLITE_RECONCILIATION_SQL: ReconciliationSql = SqliteReconciliationSql()
