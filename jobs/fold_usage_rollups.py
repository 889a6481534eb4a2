"""Fold the hourly usage totals the triggers append (see ``metering.analytics.rollups``)."""

from __future__ import annotations

from metering.analytics.rollups import KEYS_PER_FOLD, fold_usage_rollups
from metering.db import Database


async def run_once(database: Database) -> str:
    """Fold every key with new differences, one bounded transaction at a time."""
    keys = rows_before = rows_after = 0
    while True:
        async with database.session_scope() as session:
            result = await fold_usage_rollups(session)
        if result is None:
            return "another fold is running; skipped"
        keys += result.keys
        rows_before += result.rows_before
        rows_after += result.rows_after
        if result.keys < KEYS_PER_FOLD:
            return f"folded {rows_before} rows of {keys} keys into {rows_after}"
