"""Finance export throughput and memory, and the usage time series latency, on PostgreSQL.

1. Ledger export: N ledger entries (N/2 balanced transactions) are inserted with
   server-side ``INSERT … SELECT generate_series`` (no ORM), then ``metering export ledger``
   runs in a subprocess per (size, format), three times (the median is shown, with the
   range). Each export is timed and its peak RSS read with ``resource.getrusage(RUSAGE_CHILDREN)``
   in a wrapper process that runs nothing else, so each figure is that export's own.
   Baseline: PostgreSQL's own ``COPY (same query) TO STDOUT CSV`` through asyncpg into a
   file, the floor of any exporter.
2. Usage series: an org with 1,000,000 requests in one month across 100 members; the daily
   per-member series, as the service runs it (from the hourly totals the triggers keep,
   folded as the scheduler leaves them) and through the HTTP route in-process (median of
   repeated runs, after one warm-up); beside it, the same series read from the records.

    python bench/export.py [--quick] [--sizes 1000000,5000000] [--usage-requests 1000000]

Targets: >= 300,000 rows/s per format and size; peak RSS <= 250 MB and flat in N (constant
memory); usage series <= 200 ms on PostgreSQL. The exports read through PostgreSQL's COPY
(``metering.exports.copy_repository``), so the baseline is also the floor they approach.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import asyncpg
from _common import Row, pg_database, postgres_reachable, print_table

PERIOD = "2026-10"
PROVIDERS = 50
ACCOUNTS = 10_000
USAGE_TARGET_MS = 200.0
EXPORT_TARGET_ROWS_S = 300_000
RSS_TARGET_MB = 250
# What a Parquet export cannot help keeping: the footer lists every row group, and Arrow's writer
# holds each group's metadata until it closes (13.7 KiB per 65,536-row group, with or without statistics).
_GROWTH_NOTES = {"parquet": "medians; includes the footer Arrow's writer keeps, 13.7 KiB per 65,536-row group"}
LEDGER_BASELINE_SQL = """
    SELECT e.id, t.id, t.kind, t.idempotency_key, t.account_name, t.provider_id, t.period, t.original_period,
           t.usage_record_id, t.memo, t.created_at, a.code, a.kind, a.owner, e.amount_nano_usd
    FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
    JOIN ledger_accounts a ON a.id = e.ledger_account_id
    WHERE t.period = '{period}' ORDER BY e.id
"""


async def fill_ledger(dsn: str, entries: int) -> None:
    """Replace the ledger with ``entries`` rows: each transaction debits a receivable and credits a payable."""
    transactions = entries // 2
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "TRUNCATE ledger_entries, ledger_transactions, ledger_accounts RESTART IDENTITY CASCADE"
        )
        await connection.execute(
            f"""
            INSERT INTO ledger_accounts (id, code, kind, owner, period, balance_nano_usd)
            SELECT i, 'payable:p' || i || ':{PERIOD}', 'payable', 'p' || i, '{PERIOD}', 0
            FROM generate_series(1, {PROVIDERS}) AS i
            UNION ALL
            SELECT {PROVIDERS} + i, 'receivable:a' || i || ':{PERIOD}', 'receivable', 'a' || i, '{PERIOD}', 0
            FROM generate_series(1, {ACCOUNTS}) AS i
            """
        )
        await connection.execute(
            f"""
            INSERT INTO ledger_transactions (id, kind, idempotency_key, account_name, provider_id, period, memo, created_at)
            SELECT i, 'request_cost', 'cost:' || i, 'a' || (1 + i % {ACCOUNTS}), 'p' || (1 + i % {PROVIDERS}),
                   '{PERIOD}', CASE WHEN i % 1000 = 0 THEN '=formula ' || i END,
                   timestamptz '2026-10-01 00:00:00+00' + (i % 2592000) * interval '1 second'
            FROM generate_series(1, {transactions}) AS i
            """
        )
        await connection.execute(
            f"""
            INSERT INTO ledger_entries (id, transaction_id, ledger_account_id, amount_nano_usd, period)
            SELECT 2 * i - 1, i, 1 + i % {PROVIDERS}, -(1000 + i), '{PERIOD}' FROM generate_series(1, {transactions}) AS i
            UNION ALL
            SELECT 2 * i, i, {PROVIDERS} + 1 + i % {ACCOUNTS}, 1000 + i, '{PERIOD}' FROM generate_series(1, {transactions}) AS i
            """
        )
        # A closed period's rows are long settled (see ``settle``).
        await settle(connection, "ledger_accounts, ledger_transactions, ledger_entries")
    finally:
        await connection.close()


async def settle(connection: asyncpg.Connection, tables: str) -> None:
    """Bring freshly loaded tables to the state of long-settled ones before anything is measured.

    Vacuumed: hint bits set, the visibility map current, and no autovacuum of the load running
    beside the measurements. Checkpointed: the load's pages are written out now. Otherwise they
    were flushed during the measurements, by a checkpoint or by the kernel's writeback about
    30 s after the load (170 MB still dirty in the page cache after a 1M-row ledger).
    """
    await connection.execute(f"VACUUM (ANALYZE) {tables}")
    await connection.execute("CHECKPOINT")


async def copy_baseline(dsn: str, out: Path) -> float:
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await connection.copy_from_query(LEDGER_BASELINE_SQL.format(period=PERIOD), output=str(out), format="csv")
        return time.perf_counter() - started
    finally:
        await connection.close()


# The wrapper that runs one export and reports its usage. A ``python -c`` of the standard
# library only: starting this file instead would import the bench's own dependencies
# (asyncpg, the test support) in the wrapper and add their import time to every export's wall time.
_WRAPPER = """
import resource, subprocess, sys
returncode = subprocess.run(sys.argv[1:], check=False).returncode
if returncode:
    sys.exit(returncode)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
"""


def measured_child(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run ``command`` under a wrapper that reports its usage; returns (wall s, peak MiB, CPU s).

    Peak RSS is read with ``RUSAGE_CHILDREN`` in a wrapper that runs nothing else, so it is that export's own.
    """
    wrapper = [sys.executable, "-S", "-c", _WRAPPER, *command]
    started = time.perf_counter()
    result = subprocess.run(wrapper, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"export failed: {result.stderr[-2000:]}")
    peak_kib, cpu_seconds = result.stdout.strip().splitlines()[-1].split()
    return elapsed, int(peak_kib) / 1024, float(cpu_seconds)


def export_env(url: str, data_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": _common.ROOT,
        "METERING_ENVIRONMENT": "embedded",
        "METERING_DATA_DIR": data_dir,
        "METERING_DATABASE_URL": url,
        "METERING_SERVICE_TOKENS": _common.SERVICE_TOKEN,
        "METERING_SECRET_KEY": "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=",
        "METERING_JWT_SECRET": "bench-jwt-secret-long-enough-for-hs256",
    }


def bench_exports(url: str, sizes: list[int], repeats: int) -> list[Row]:
    dsn = _common.asyncpg_dsn(url)
    rows: list[Row] = []
    peak_by_format: dict[str, list[tuple[int, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="metering-export-bench-") as tmp:
        env = export_env(url, tmp)
        startup, startup_rss, startup_cpu = measured_child([sys.executable, "-m", "cli.main", "export", "--help"], env)
        rows.append(
            Row(
                "process start (metering export --help), included below",
                startup * 1000,
                "ms",
                note=f"{startup_cpu:.1f} CPU s, {startup_rss:.0f} MiB RSS",
            )
        )
        for size in sizes:
            started = time.perf_counter()
            asyncio.run(fill_ledger(dsn, size))
            print(f"  {size:,} ledger rows inserted in {time.perf_counter() - started:.1f} s", flush=True)
            baseline_seconds = asyncio.run(copy_baseline(dsn, Path(tmp) / "baseline.csv"))
            baseline_rate = size / baseline_seconds
            rows.append(
                Row(f"COPY TO csv baseline, {size:,} rows", baseline_rate, "rows/s", note=f"{baseline_seconds:.1f} s")
            )
            for fmt in ("parquet", "csv"):
                out = Path(tmp) / f"ledger.{fmt}"
                command = [
                    sys.executable,
                    "-m",
                    "cli.main",
                    "export",
                    "ledger",
                    "--period",
                    PERIOD,
                    "--format",
                    fmt,
                    "--out",
                    str(out),
                    "--no-progress",
                ]
                runs = [measured_child(command, env) for _ in range(repeats)]
                seconds, _, cpu = sorted(runs)[len(runs) // 2]  # the run of median wall time
                peaks = sorted(peak for _, peak, _ in runs)
                rate = size / seconds
                rows.append(
                    Row(
                        f"export {fmt}, {size:,} rows",
                        rate,
                        "rows/s",
                        f">= {EXPORT_TARGET_ROWS_S:,}",
                        note=f"median of {repeats}: {seconds:.1f} s wall, {size / cpu:,.0f} rows per CPU s, "
                        f"{out.stat().st_size / 2**20:.0f} MiB file, {rate / baseline_rate:.2f}x of COPY",
                    )
                )
                peak = statistics.median(peaks)
                peak_by_format.setdefault(fmt, []).append((size, peak))
                rows.append(
                    Row(
                        f"export {fmt}, {size:,} rows: peak RSS",
                        peak,
                        "MiB",
                        f"<= {RSS_TARGET_MB}, flat",
                        note=f"median of {repeats}: {peak:.1f}, {peaks[0]:.1f}-{peaks[-1]:.1f}",
                    )
                )
                out.unlink()
    for fmt, peaks_by_size in peak_by_format.items():
        (small, small_peak), (large, large_peak) = peaks_by_size[0], peaks_by_size[-1]
        if large > small:
            rows.append(
                Row(
                    f"export {fmt}: peak RSS at {large:,} rows minus at {small:,}",
                    large_peak - small_peak,
                    "MiB",
                    "<= 0",
                    note=_GROWTH_NOTES.get(fmt, "medians"),
                )
            )
    return rows


async def fill_usage(dsn: str, requests: int, members: int = 100) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            """
            INSERT INTO providers (id, url, request_id_header, pricing, credit_eligible, default_estimate_nano_usd,
                                   hardware_prices_nano_usd_per_second, models, created_at, updated_at)
            VALUES ('together', 'http://127.0.0.1:9', 'Inference-Id', 'compute_time', true, 0, '{}', '{}', now(), now())
            """
        )
        await connection.execute(
            """
            INSERT INTO accounts (name, kind, plan, seats, status, created_at, updated_at)
            SELECT 'member-' || i, 'user', 'pro', 1, 'active', now(), now() FROM generate_series(1, $1::int) AS i
            UNION ALL SELECT 'acme', 'org', 'enterprise', $1::int, 'active', now(), now()
            """,
            members,
        )
        await connection.execute(
            """
            INSERT INTO memberships (org_name, user_name, role, created_at)
            SELECT 'acme', 'member-' || i, CASE WHEN i = 1 THEN 'admin' ELSE 'write' END, now()
            FROM generate_series(1, $1::int) AS i
            """,
            members,
        )
        await connection.execute(
            f"""
            INSERT INTO usage_records (provider_id, request_id, user_name, bill_to, billing_account, bill_to_flagged,
                model, custom_key, started_at, period, content_hash, status, estimate_nano_usd, cost_nano_usd,
                received_at, attempts)
            SELECT 'together', 'req-' || i, 'member-' || (1 + i % {members}), 'acme', 'acme', false,
                   'org/model-' || (i % 7), i % 20 = 0, ts, '{PERIOD}', md5(i::text),
                   CASE WHEN i % 20 = 0 THEN 'custom_key' WHEN i % 10 = 1 THEN 'pending' ELSE 'priced' END,
                   0, CASE WHEN i % 20 <> 0 AND i % 10 <> 1 THEN 1000 + i % 5000 END, ts, 0
            FROM (SELECT i, timestamptz '2026-10-01 00:00:00+00' + (i::bigint * 2678399 / {requests}) * interval '1 second' AS ts
                  FROM generate_series(1, {requests}) AS i) AS s
            """
        )
        # A steady-state table: autovacuum has set the visibility map, so index-only scans
        # need no heap fetches (a bulk load right before the query would not have it yet).
        await settle(connection, "usage_records")
    finally:
        await connection.close()


async def time_floor(dsn: str, repeats: int) -> list[float]:
    """The floor: PostgreSQL counting the same rows (parallel scan, no grouping), in ms."""
    connection = await asyncpg.connect(dsn)
    timings = []
    try:
        await connection.execute("SET jit = off")
        for attempt in range(repeats + 1):
            began = time.perf_counter()
            await connection.fetchval(
                "SELECT count(*) FROM usage_records WHERE billing_account = 'acme' "
                "AND started_at >= '2026-10-01T00:00:00Z' AND started_at < '2026-11-01T00:00:00Z'"
            )
            if attempt:
                timings.append((time.perf_counter() - began) * 1000)
    finally:
        await connection.close()
    return timings


async def time_usage_series(url: str, repeats: int) -> tuple[list[float], list[float], list[float], int]:
    import httpx

    from api.app import create_app
    from jobs.fold_usage_rollups import run_once as fold_usage_rollups
    from metering.analytics.repository import analytics_repository
    from metering.analytics.service import analytics_service
    from metering.config import Settings
    from metering.db import Database
    from metering.models import Account
    from tests.factories.billing_data import as_user

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            environment="embedded",
            database_url=url,
            data_dir=Path(tmp),
            service_tokens="t",
            secret_key="YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=",
            jwt_secret="test-jwt-secret-that-is-long-enough-for-hs256",
        )
        database = Database(url)
        service_ms, route_ms, direct_ms = [], [], []
        points = 0
        try:
            # The usage totals as the scheduler's fold-usage-rollups job leaves them, analysed.
            await fold_usage_rollups(database)
            async with database.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("VACUUM (ANALYZE) usage_rollups")
            start, end = analytics_service.resolve_range(start="2026-10-01", end="2026-10-31", interval="day")
            for attempt in range(repeats + 1):
                async with database.session_scope() as session:
                    began = time.perf_counter()
                    await analytics_repository._buckets_postgres(
                        session, account="acme", start=start, end=end, interval="day", group_by="member"
                    )
                    if attempt:
                        direct_ms.append((time.perf_counter() - began) * 1000)
            for attempt in range(repeats + 1):
                async with database.session_scope() as session:
                    account = await session.get(Account, "acme")
                    began = time.perf_counter()
                    series = await analytics_service.get_usage_series(
                        session, account=account, start=start, end=end, interval="day", group_by="member"
                    )
                    if attempt:
                        service_ms.append((time.perf_counter() - began) * 1000)
                points = len(series.buckets)
            app = create_app(settings, database=database)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
                for attempt in range(repeats + 1):
                    began = time.perf_counter()
                    response = await http.get(
                        "/v1/accounts/acme/usage?from=2026-10-01&to=2026-10-31&interval=day",
                        headers=as_user("member-1"),
                    )
                    response.raise_for_status()
                    if attempt:
                        route_ms.append((time.perf_counter() - began) * 1000)
        finally:
            await database.dispose()
    return service_ms, route_ms, direct_ms, points


def bench_usage(url: str, requests: int, repeats: int) -> list[Row]:
    started = time.perf_counter()
    asyncio.run(fill_usage(_common.asyncpg_dsn(url), requests))
    print(f"  {requests:,} usage records inserted in {time.perf_counter() - started:.1f} s", flush=True)
    service_ms, route_ms, direct_ms, points = asyncio.run(time_usage_series(url, repeats))
    floor_ms = asyncio.run(time_floor(_common.asyncpg_dsn(url), repeats))
    return [
        Row("floor: count(*) of the same rows", statistics.median(floor_ms), "ms", note=f"min {min(floor_ms):.0f} ms"),
        Row(
            "same series read from the records (a range splitting an hour)",
            statistics.median(direct_ms),
            "ms",
            note=f"min {min(direct_ms):.0f} ms; the covering-index path",
        ),
        Row(
            f"usage series query, {requests:,} requests, 100 members, daily",
            statistics.median(service_ms),
            "ms",
            f"<= {USAGE_TARGET_MS:.0f}",
            f"min {min(service_ms):.0f} ms, {points:,} points, {repeats} runs, "
            f"{statistics.median(service_ms) / statistics.median(floor_ms):.1f}x the floor",
        ),
        Row(
            "usage series via HTTP route (in-process)",
            statistics.median(route_ms),
            "ms",
            f"<= {USAGE_TARGET_MS:.0f}",
            f"min {min(route_ms):.0f} ms, incl. JSON of every point",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k and 300k ledger rows")
    parser.add_argument("--sizes", default=None, help="comma-separated ledger row counts")
    parser.add_argument("--usage-requests", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=None, help="usage series runs (default 20, 5 quick)")
    parser.add_argument("--export-repeats", type=int, default=3, help="runs of each export (default 3; median shown)")
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([100_000, 300_000] if args.quick else [1_000_000, 5_000_000])
    )
    repeats = args.repeats or (5 if args.quick else 20)
    if not postgres_reachable():
        sys.exit("PostgreSQL is not reachable; this benchmark needs it")
    with pg_database("metering_bench_export") as (_, url):
        rows = bench_exports(url, sizes, args.export_repeats)
    with pg_database("metering_bench_usage") as (_, url):
        rows += bench_usage(url, args.usage_requests, repeats)
    print_table("Finance export and usage series (PostgreSQL)", rows)


if __name__ == "__main__":
    main()
