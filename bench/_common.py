"""Shared pieces of the benchmarks: throwaway databases, a real ``metering serve``, a result table.

Built on ``tests/support`` so benchmarks and tests start servers and databases the same way.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as ``python bench/x.py``: make the project importable
    sys.path.insert(0, ROOT)

from tests.support.databases import PG_ADMIN_DSN, drop_pg_database, migrated_pg_database, postgres_reachable  # noqa: E402
from tests.support.servers import free_port, metering_server  # noqa: E402

SERVICE_TOKEN = "bench-service-token"
__all__ = [
    "PG_ADMIN_DSN",
    "ROOT",
    "SERVICE_TOKEN",
    "Row",
    "asyncpg_dsn",
    "free_port",
    "pg_database",
    "postgres_reachable",
    "print_table",
    "serve",
]


@contextmanager
def pg_database(prefix: str = "metering_bench") -> Iterator[tuple[str, str]]:
    """A migrated PostgreSQL database for one run: yields (name, SQLAlchemy URL), dropped after."""
    name, url = migrated_pg_database(prefix)
    try:
        yield name, url
    finally:
        drop_pg_database(name)


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextmanager
def serve(database_url: str | None = None, *, workers: int = 1) -> Iterator[str]:
    """``metering serve`` in a subprocess on a free port; SQLite in a temp folder when no URL is given."""
    with tempfile.TemporaryDirectory(prefix="metering-bench-") as data_dir:
        env = {
            "METERING_ENVIRONMENT": "embedded",
            "METERING_DATA_DIR": data_dir,
            "METERING_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{data_dir}/metering.db",
            "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
            "METERING_SECRET_KEY": base64.urlsafe_b64encode(b"b" * 32).decode(),
            "METERING_JWT_SECRET": "bench-jwt-secret-long-enough-for-hs256",
        }
        with metering_server(env, workers=workers) as base_url:
            yield base_url


@dataclass
class Row:
    """One line of a benchmark's table: a figure, its unit, and the target it is held to."""

    figure: str
    value: float
    unit: str
    target: str = ""
    note: str = ""


def print_table(title: str, rows: list[Row]) -> None:
    width = max([len(r.figure) for r in rows] + [6])
    print(f"\n{title}")
    print(f"{'figure':<{width}}  {'value':>12}  {'unit':<10}  {'target':<10}  note")
    print("-" * (width + 50))
    for r in rows:
        value = f"{r.value:,.0f}" if abs(r.value) >= 100 else f"{r.value:,.2f}"
        print(f"{r.figure:<{width}}  {value:>12}  {r.unit:<10}  {r.target:<10}  {r.note}")
    sys.stdout.flush()
