"""The SQLite connection set-up of ``metering.db``: durability and the settings ingest's speed relies on."""

from __future__ import annotations

from pathlib import Path

from metering.db import Database


async def pragma_values(db: Database) -> dict[str, object]:
    names = (
        "journal_mode",
        "synchronous",
        "foreign_keys",
        "busy_timeout",
        "cache_size",
        "mmap_size",
        "temp_store",
        "wal_autocheckpoint",
        "journal_size_limit",
    )
    async with db.session_scope() as session:
        connection = await session.connection()
        return {name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar() for name in names}


class TestSqliteConnections:
    async def test_every_connection_is_wal_with_normal_sync_and_foreign_keys(self, tmp_path: Path) -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path}/metering.db")
        try:
            assert await pragma_values(db) == {
                "journal_mode": "wal",
                "synchronous": 1,  # NORMAL
                "foreign_keys": 1,
                "busy_timeout": 30_000,
                "cache_size": -65_536,
                "mmap_size": 268_435_456,
                "temp_store": 2,  # MEMORY
                "wal_autocheckpoint": 8_192,
                "journal_size_limit": 67_108_864,
            }
        finally:
            await db.dispose()
