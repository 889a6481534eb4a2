"""Provider reconciliation throughput and memory, on SQLite and PostgreSQL.

For each database and size: a migrated database with one provider and ``--priced`` requests
priced through ``settle`` (the ledger side), then a statement of N lines (those requests, a
tenth of them at another amount, and N minus them the ledger does not know) generated as it
is sent, 5,000 lines a chunk, reconciled by ``reconciliation_service.reconcile``: parsing,
staging, the comparison in SQL, the items stored. Figure: statement lines per second.

Baseline, in the same run: the database's own bulk insert of the same rows, already parsed,
into a table shaped like the staging one: ``executemany`` in one transaction on SQLite, asyncpg's
``COPY`` on PostgreSQL, the floor of any loader. Memory: the peak of the process's anonymous
resident memory (``RssAnon``: the heap, not SQLite's memory-mapped file) above where it stood
before the upload, sampled every 20 ms; flat in N means constant memory.

    python bench/reconciliation.py [--sizes 100000,1000000] [--priced 1000] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import asyncpg
from _common import Row, pg_database, postgres_reachable, print_table

from metering.config import set_settings
from metering.db import Database
from metering.periods import current_period, period_bounds, previous_period
from metering.reconciliation.service import reconciliation_service
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest
from tests.conftest import make_settings
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.metering.ledger.helpers import store_usage
from tests.support.databases import migrated_sqlite_template

PERIOD = previous_period(current_period())
CHUNK_LINES = 5_000
SAMPLE_SECONDS = 0.02
STAGING_SHAPE = "(reconciliation_id BIGINT NOT NULL, request_id VARCHAR(256) NOT NULL, cost_nano_usd BIGINT NOT NULL, line BIGINT NOT NULL, PRIMARY KEY (reconciliation_id, request_id))"


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def cost_of(index: int, priced: int) -> int:
    """The statement's amount of line ``index``: a tenth of the priced requests are stated 1 nano-USD high."""
    base = 1_000 + index % 997
    return base + 1 if index < priced and index % 10 == 0 else base


def request_id(index: int) -> str:
    return f"req-{index:09d}"


async def statement(lines: int, priced: int) -> AsyncIterator[bytes]:
    yield b"request_id,cost_nano_usd\n"
    for start in range(0, lines, CHUNK_LINES):
        yield "".join(
            f"{request_id(i)},{cost_of(i, priced)}\n" for i in range(start, min(start + CHUNK_LINES, lines))
        ).encode()


async def price_ledger_side(db: Database, priced: int) -> None:
    started_at = period_bounds(PERIOD)[0] + timedelta(days=3)
    async with db.session_scope() as session:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
    for start in range(0, priced, 2_000):
        async with db.session_scope() as session:
            ids = [
                (await store_usage(session, request_id=request_id(i), started_at=started_at, account=False)).id
                for i in range(start, min(start + 2_000, priced))
            ]
        async with db.session_scope() as session:
            await settle(
                session, priced=[PricedRequest(record_id, 1_000 + (start + n) % 997) for n, record_id in enumerate(ids)]
            )


async def measured(work: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[float, int, int]:
    """(seconds, peak RssAnon in KiB, its growth above where it stood before) of ``work``."""
    before = rss_anon_kib()
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_anon_kib())
            await asyncio.sleep(SAMPLE_SECONDS)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        await work()
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        await sampler
    peak = max(peak, rss_anon_kib())
    return elapsed, peak, peak - before


def rows_of(lines: int, priced: int) -> list[tuple[int, str, int, int]]:
    return [(1, request_id(i), cost_of(i, priced), i + 2) for i in range(lines)]


def sqlite_baseline(path: Path, lines: int, priced: int) -> float:
    rows = rows_of(lines, priced)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"CREATE TABLE baseline {STAGING_SHAPE} WITHOUT ROWID")
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany("INSERT INTO baseline VALUES (?, ?, ?, ?)", rows)
        connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        connection.execute("DROP TABLE baseline")
    finally:
        connection.close()
    return lines / elapsed


async def postgres_baseline(url: str, lines: int, priced: int) -> float:
    rows = rows_of(lines, priced)
    connection = await asyncpg.connect(_common.asyncpg_dsn(url))
    try:
        await connection.execute(f"CREATE UNLOGGED TABLE baseline {STAGING_SHAPE}")
        started = time.perf_counter()
        async with connection.transaction():
            await connection.copy_records_to_table(
                "baseline", records=rows, columns=["reconciliation_id", "request_id", "cost_nano_usd", "line"]
            )
        elapsed = time.perf_counter() - started
        await connection.execute("DROP TABLE baseline")
    finally:
        await connection.close()
    return lines / elapsed


async def run_one(url: str, data_dir: Path, lines: int, priced: int) -> tuple[float, int, int, dict[str, int]]:
    set_settings(make_settings(url, data_dir))
    db = Database(url)
    try:
        await price_ledger_side(db, priced)
        outcome: dict[str, int] = {}

        async def work() -> None:
            report = await reconciliation_service.reconcile(
                db, provider_id="together", period=PERIOD, statement=statement(lines, priced), actor="bench"
            )
            done = report.reconciliation
            outcome.update(
                matched=done.matched, mismatched=done.amount_mismatch_count, only_provider=done.only_provider_count
            )

        seconds, peak_kib, growth_kib = await measured(work)
    finally:
        await db.dispose()
        set_settings(None)
    return lines / seconds, peak_kib, growth_kib, outcome


def bench_engine(name: str, sizes: list[int], priced: int, make: Callable[[Path], Any]) -> list[Row]:
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="metering-bench-") as directory, make(Path(directory)) as target:
            url, baseline = target
            rate, peak_kib, growth_kib, outcome = asyncio.run(run_one(url, Path(directory), size, priced))
            floor = baseline(size, priced)
        expected = {
            "matched": priced - (priced + 9) // 10,
            "mismatched": (priced + 9) // 10,
            "only_provider": size - priced,
        }
        note = "" if outcome == expected else f"UNEXPECTED outcome {outcome}"
        rows += [
            Row(f"{name}: reconcile {size:,} lines", rate, "lines/s", "", note),
            Row(f"{name}: bulk insert baseline {size:,}", floor, "rows/s"),
            Row(f"{name}: ratio to baseline {size:,}", rate / floor, "x"),
            Row(f"{name}: peak RssAnon {size:,}", peak_kib / 1024, "MiB", "", "the whole process"),
            Row(f"{name}: peak RssAnon growth {size:,}", growth_kib / 1024, "MiB", "flat in N", "during the upload"),
        ]
    return rows


class _Sqlite:
    def __init__(self, directory: Path) -> None:
        self.path = migrated_sqlite_template(directory)

    def __enter__(self) -> tuple[str, Callable[[int, int], float]]:
        return f"sqlite+aiosqlite:///{self.path}", lambda size, priced: sqlite_baseline(self.path, size, priced)

    def __exit__(self, *exc: object) -> None:
        return None


class _Postgres:
    def __init__(self, _directory: Path) -> None:
        self.context = pg_database("metering_bench_reconciliation")

    def __enter__(self) -> tuple[str, Callable[[int, int], float]]:
        _, url = self.context.__enter__()
        return url, lambda size, priced: asyncio.run(postgres_baseline(url, size, priced))

    def __exit__(self, *exc: object) -> None:
        self.context.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="statement lines, comma-separated")
    parser.add_argument("--priced", type=int, default=1_000, help="requests on the ledger side")
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = bench_engine("SQLite", sizes, args.priced, _Sqlite)
    if not args.sqlite_only and postgres_reachable():
        rows += bench_engine("PostgreSQL", sizes, args.priced, _Postgres)
    print_table(f"Provider reconciliation, {args.priced:,} requests on the ledger side", rows)


if __name__ == "__main__":
    main()
