"""Usage ingest throughput through a real ``metering serve`` (uvicorn, HTTP on loopback).

Posts N records in batches of 1,000 from a few concurrent senders, on SQLite and on
PostgreSQL, and prints records/s. On PostgreSQL the same rows are then written by a raw
asyncpg ``unnest`` INSERT … ON CONFLICT DO NOTHING into a fresh copy of the table (same
indexes, checks and foreign keys), the floor any ingest path pays; the ratio of the two is
the cost of Metering's checks, accounting and HTTP on top of it.

    python bench/ingest.py [--records 200000] [--quick] [--senders 4] [--users 1000] [--workers 1]
                           [--only postgres|sqlite|hook ...]

Targets: PostgreSQL >= 50,000 records/s and >= 0.3 of raw; SQLite >= 20,000 records/s;
the hook's build + enqueue <= 100 µs median (bench/hook_enqueue.py, also printed here).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import asyncpg
import httpx
import orjson
from _common import Row, pg_database, postgres_reachable, print_table, serve

PG_TARGET = 50_000
PG_RATIO_TARGET = 0.3
SQLITE_TARGET = 20_000
PROVIDER_ID = "together"
REGISTRATION = {
    "url": "https://api.together.example",
    "pricing": "cost_endpoint",
    "cost_endpoint": "https://api.together.example/billing/costs",
    "cost_token": "bench-provider-token",
    "default_estimate_nano_usd": 100_000,
}


def make_records(count: int, *, users: int = 1_000) -> list[dict]:
    """Distinct requests from a pool of users, started over the last hour (one period)."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return [
        {
            "request_id": f"req-{i:010d}",
            "provider": PROVIDER_ID,
            "user": f"user-{i % users:05d}",
            "bill_to": None,
            "model": "meta-llama/Llama-3.3-70B-Instruct",
            "task": "conversational",
            "custom_key": False,
            "started_at": (start + timedelta(milliseconds=i % 3_600_000)).isoformat(),
            "input_tokens": 512 + i % 100,
            "output_tokens": 128 + i % 50,
        }
        for i in range(count)
    ]


def batches_of(records: list[dict], size: int) -> list[list[dict]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


async def _post_all(base_url: str, bodies: list[bytes], senders: int) -> tuple[float, int]:
    """Seconds to deliver every body with ``senders`` concurrent connections; and records accepted."""
    headers = {"Authorization": f"Bearer {_common.SERVICE_TOKEN}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as client:
        (await client.put(f"/internal/v1/providers/{PROVIDER_ID}", json=REGISTRATION)).raise_for_status()
        pending = iter(bodies)
        accepted = 0

        async def sender() -> None:
            nonlocal accepted
            for body in pending:
                response = await client.post("/internal/v1/usage", content=body)
                response.raise_for_status()
                answer = response.json()
                if answer["rejected"]:
                    raise RuntimeError(f"records rejected: {answer['rejected'][:3]}")
                accepted += answer["accepted"]

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        return time.perf_counter() - started, accepted


def ingest_rate(database_url: str | None, records: list[dict], args: argparse.Namespace) -> tuple[float, float | None]:
    """Records/s, and the server's CPU milliseconds (all threads and workers) per POST when readable."""
    bodies = [orjson.dumps({"records": batch}) for batch in batches_of(records, args.batch)]
    with serve(database_url, workers=args.workers) as base_url:
        cpu_before = server_cpu_seconds(base_url)
        seconds, accepted = asyncio.run(_post_all(base_url, bodies, args.senders))
        cpu_after = server_cpu_seconds(base_url)
    if accepted != len(records):
        raise RuntimeError(f"{accepted} of {len(records)} records accepted")
    cpu_per_post = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) * 1000 / len(bodies)
    return len(records) / seconds, cpu_per_post


def server_cpu_seconds(base_url: str) -> float | None:
    """User + system CPU seconds used so far by the ``metering serve`` listening at ``base_url`` and its
    worker processes, read from /proc; None where there is no /proc (or no such process)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    port = base_url.rsplit(":", 1)[1].encode()
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    server = None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid], ticks[pid] = int(stat[1]), int(stat[11]) + int(stat[12])
        if b"serve" in command and b"--port" in command and port in command:
            server = pid
    if server is None:
        return None
    tree, grown = {server}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return sum(ticks[pid] for pid in tree) / os.sysconf("SC_CLK_TCK")


# The columns ingest writes, with the same constants; only the table differs.
_RAW_COLUMNS = (
    ("provider_id", "varchar"),
    ("request_id", "varchar"),
    ("user_name", "varchar"),
    ("bill_to", "varchar"),
    ("billing_account", "varchar"),
    ("bill_to_flag_reason", "varchar"),
    ("model", "varchar"),
    ("task", "varchar"),
    ("custom_key", "boolean"),
    ("started_at", "timestamptz"),
    ("period", "varchar"),
    ("duration_ms", "bigint"),
    ("hardware", "varchar"),
    ("input_tokens", "bigint"),
    ("output_tokens", "bigint"),
    ("hold_id", "varchar"),
    ("content_hash", "varchar"),
)


def _raw_insert_sql(table: str) -> str:
    names = ", ".join(name for name, _ in _RAW_COLUMNS)
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_RAW_COLUMNS, start=1))
    now = len(_RAW_COLUMNS) + 1
    return (
        f"INSERT INTO {table} ({names}, bill_to_flagged, status, estimate_nano_usd, received_at, attempts, "
        f"next_attempt_at) SELECT {names}, bill_to_flag_reason IS NOT NULL, "
        f"CASE WHEN custom_key THEN 'custom_key' ELSE 'pending' END, 0, ${now}, 0, ${now} "
        f"FROM unnest({arrays}) AS batch({names}) "
        "ON CONFLICT (provider_id, request_id) DO NOTHING RETURNING id, provider_id, request_id"
    )


def _raw_arrays(batch: list[dict]) -> list[list]:
    started = [datetime.fromisoformat(r["started_at"]).astimezone(UTC) for r in batch]
    return [
        [r["provider"] for r in batch],
        [r["request_id"] for r in batch],
        [r["user"] for r in batch],
        [None] * len(batch),
        [r["user"] for r in batch],
        [None] * len(batch),
        [r["model"] for r in batch],
        [r["task"] for r in batch],
        [False] * len(batch),
        started,
        [f"{s.year:04d}-{s.month:02d}" for s in started],
        [None] * len(batch),
        [None] * len(batch),
        [r["input_tokens"] for r in batch],
        [r["output_tokens"] for r in batch],
        [None] * len(batch),
        [hashlib.blake2b(orjson.dumps(r), digest_size=16).hexdigest() for r in batch],
    ]


async def raw_unnest_rate(dsn: str, records: list[dict], args: argparse.Namespace) -> float:
    """Rows/s of the bare statement into ``usage_records_raw``, a fresh copy of the table."""
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("CREATE TABLE usage_records_raw (LIKE usage_records INCLUDING ALL)")
        # LIKE copies columns, defaults, checks and indexes but not foreign keys; the copy gets
        # them too, so both inserts pay for the same checks.
        foreign_keys = await admin.fetch(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'usage_records'::regclass AND contype = 'f'"
        )
        for (definition,) in foreign_keys:
            await admin.execute(f"ALTER TABLE usage_records_raw ADD {definition}")
        # usage_records is partitioned on PostgreSQL, its (provider, request_id) kept unique by
        # usage_request_keys: the plain copy gets the unique index the bare INSERT … ON CONFLICT needs.
        await admin.execute("CREATE UNIQUE INDEX ON usage_records_raw (provider_id, request_id)")
    finally:
        await admin.close()
    sql = _raw_insert_sql("usage_records_raw")
    prepared = [_raw_arrays(batch) for batch in batches_of(records, args.batch)]
    now = datetime.now(UTC)
    pool = await asyncpg.create_pool(dsn, min_size=args.senders, max_size=args.senders)
    try:
        pending = iter(prepared)
        inserted = 0

        async def sender() -> None:
            nonlocal inserted
            for arrays in pending:
                async with pool.acquire() as connection:
                    returned = await connection.fetch(sql, *arrays, now)
                inserted += len(returned)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(args.senders)))
        seconds = time.perf_counter() - started
    finally:
        await pool.close()
    if inserted != len(records):
        raise RuntimeError(f"raw insert stored {inserted} of {len(records)} rows")
    return len(records) / seconds


def raw_sqlite_rate(records: list[dict], args: argparse.Namespace) -> float:
    """Rows/s of a bare ``executemany`` INSERT … ON CONFLICT DO NOTHING, one transaction per batch, into the
    migrated table with the app's pragmas (``metering.db.SQLITE_PRAGMAS``). Foreign keys are off here (the
    parents do not exist), which only makes the baseline faster than ingest can ever be."""
    from metering.db import SQLITE_PRAGMAS
    from metering.migrate import upgrade_sync

    names = [name for name, _ in _RAW_COLUMNS]
    sql = (
        f"INSERT INTO usage_records ({', '.join(names)}, bill_to_flagged, status, estimate_nano_usd, received_at, "
        f"attempts, next_attempt_at) VALUES ({', '.join('?' * (len(names) + 6))}) "
        "ON CONFLICT (provider_id, request_id) DO NOTHING"
    )
    now = datetime.now(UTC).isoformat(sep=" ")
    prepared = [
        [
            (
                *tuple(str(value) if isinstance(value, datetime) else value for value in row),
                row[5] is not None,
                "pending",
                0,
                now,
                0,
                now,
            )
            for row in zip(*_raw_arrays(batch))
        ]
        for batch in batches_of(records, args.batch)
    ]
    with tempfile.TemporaryDirectory(prefix="metering-bench-raw-") as directory:
        path = f"{directory}/raw.db"
        upgrade_sync(f"sqlite+aiosqlite:///{path}")
        connection = sqlite3.connect(path, isolation_level=None)
        for pragma in (*SQLITE_PRAGMAS, "foreign_keys=OFF"):
            connection.execute(f"PRAGMA {pragma}")
        started = time.perf_counter()
        for rows in prepared:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(sql, rows)
            connection.execute("COMMIT")
        seconds = time.perf_counter() - started
        stored = connection.execute("SELECT count(*) FROM usage_records").fetchone()[0]
        connection.close()
    if stored != len(records):
        raise RuntimeError(f"raw sqlite insert stored {stored} of {len(records)} rows")
    return len(records) / seconds


def sqlite_figures(args: argparse.Namespace) -> list[Row]:
    records = make_records(args.records, users=args.users)
    rate, cpu_per_post = ingest_rate(None, records, args)
    raw = raw_sqlite_rate(records, args)
    return [
        Row("ingest sqlite", rate, "records/s", f">= {SQLITE_TARGET:,}", _verdict(rate >= SQLITE_TARGET)),
        *_cpu_rows("ingest sqlite", cpu_per_post, args),
        Row("raw sqlite3 executemany (baseline)", raw, "rows/s"),
        Row("ingest sqlite / raw", rate / raw, "ratio"),
    ]


def postgres_figures(args: argparse.Namespace) -> list[Row]:
    if not postgres_reachable():
        return [Row("ingest postgres", 0, "records/s", f">= {PG_TARGET:,}", "skipped: PostgreSQL not reachable")]
    records = make_records(args.records, users=args.users)
    with pg_database() as (_name, url):
        rate, cpu_per_post = ingest_rate(url, records, args)
        raw = asyncio.run(raw_unnest_rate(_common.asyncpg_dsn(url), records, args))
    ratio = rate / raw
    return [
        Row("ingest postgres", rate, "records/s", f">= {PG_TARGET:,}", _verdict(rate >= PG_TARGET)),
        *_cpu_rows("ingest postgres", cpu_per_post, args),
        Row("raw asyncpg unnest (baseline)", raw, "rows/s"),
        Row("ingest postgres / raw", ratio, "ratio", f">= {PG_RATIO_TARGET}", _verdict(ratio >= PG_RATIO_TARGET)),
    ]


def hook_figures(args: argparse.Namespace) -> list[Row]:
    """The router side: median µs to build a record and append it to the durable spool."""
    import hook_enqueue

    figures = hook_enqueue.measure(2_000 if args.quick else 20_000)
    median = figures["build_and_append_normal"]["median_us"]
    target = hook_enqueue.TARGET_MEDIAN_US
    return [
        Row("hook build + enqueue (median)", median, "µs", f"<= {target:.0f}", _verdict(median <= target)),
        Row("hook enqueue only (median)", figures["append_normal"]["median_us"], "µs"),
    ]


def _cpu_rows(figure: str, cpu_per_post: float | None, args: argparse.Namespace) -> list[Row]:
    if cpu_per_post is None:
        return []
    return [Row(f"{figure}: server CPU per POST", cpu_per_post, "ms", "", f"{args.batch:,} records, all threads")]


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# One function per figure group, by name; each returns rows of the table. Add new figures here.
FIGURES: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "postgres": postgres_figures,
    "sqlite": sqlite_figures,
    "hook": hook_figures,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records per backend (default 200,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 records: a fast check that it all runs")
    parser.add_argument("--batch", type=int, default=1_000, help="records per POST (default 1,000)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders (default 4)")
    parser.add_argument("--users", type=int, default=1_000, help="distinct users the records come from (default 1,000)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument(
        "--only", action="append", choices=sorted(FIGURES), help="only these figure groups (repeatable; default all)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.records = min(args.records, 20_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Row] = []
    for name, figures in FIGURES.items():
        if args.only is None or name in args.only:
            rows.extend(figures(args))
    print_table(
        f"usage ingest: {args.records:,} records from {args.users:,} users, batches of {args.batch:,}, "
        f"{args.senders} senders, {args.workers} uvicorn worker(s)",
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
