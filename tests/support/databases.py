"""Throwaway databases for tests: a migrated SQLite template copied per test, and one
PostgreSQL database per test session, emptied between tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import asyncpg

from metering.migrate import upgrade_sync
from metering.models import Base

PG_ADMIN_DSN = os.environ.get("METERING_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("METERING_TEST_REQUIRE_POSTGRES") == "1"


def postgres_reachable() -> bool:
    async def probe() -> bool:
        try:
            connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await connection.close()
        return True

    return asyncio.run(probe())


def pg_url(dsn: str, database: str) -> str:
    """asyncpg DSN of the admin database → SQLAlchemy URL of ``database`` on the same server."""
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


def create_pg_database(prefix: str = "metering_test") -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return name


def drop_pg_database(name: str) -> None:
    async def drop() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())


def migrated_pg_database(prefix: str = "metering_test") -> tuple[str, str]:
    """A new PostgreSQL database with the schema; returns (name, SQLAlchemy URL)."""
    name = create_pg_database(prefix)
    url = pg_url(PG_ADMIN_DSN, name)
    upgrade_sync(url)
    return name, url


def truncate_pg(url: str) -> None:
    """Empty every table (identities restarted) so the next test starts from the migrated schema."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def truncate() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f"TRUNCATE TABLE {tables} RESTART IDENTITY CASCADE")
        finally:
            await connection.close()

    asyncio.run(truncate())


def migrated_sqlite_template(directory: Path) -> Path:
    path = directory / "template.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


def copy_sqlite(template: Path, directory: Path) -> str:
    target = directory / "metering.db"
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"
