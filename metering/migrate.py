"""Runs the Alembic migrations from code: ``metering db upgrade`` and the embedded auto-upgrade."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from metering.config import Settings

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade_sync(database_url: str, revision: str = "head") -> None:
    """Upgrade in a plain thread with its own event loop (Alembic's env runs asyncio.run)."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade_sync, database_url, revision)


def upgrade_on_open_sync(settings: Settings) -> None:
    """Bring the embedded database to the head revision when a command opens it (see ``Settings.migrates_on_open``)."""
    if settings.migrates_on_open:
        upgrade_sync(settings.database_url)


async def upgrade_on_open(settings: Settings) -> None:
    if settings.migrates_on_open:
        await upgrade(settings.database_url)


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade over an existing engine's connection (used by tests on throwaway databases)."""

    def _run(connection: Connection) -> None:
        config = alembic_config(str(engine.url))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_run)
