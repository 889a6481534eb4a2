"""Cost collection throughput on PostgreSQL: N pending requests drained by 2 worker processes.

A fresh database gets N pending usage records (COPY) of 1,000 users; a simulated provider
(``metering simulate-provider``, its own process) is preloaded with their costs; two
``metering jobs run-once collect-costs`` processes drain the backlog in batches of 10,000.
Prints priced/s end to end (process start to exit) and while draining, the mean time of a
10k batch split into claim / HTTP / validate / apply, then the raw baseline: SKIP LOCKED
claims and the UPDATE/INSERT of each one's 10,000 rows in one transaction with plain asyncpg
(the shape of the job's held lease), on as many connections as there are workers, and the
ratio of the two throughputs.

    python bench/collect.py [--requests 1000000] [--quick]

Targets: >= 20,000 priced/s; <= 0.5 s per 10k batch; >= 0.5 of the raw baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401
import asyncpg
import httpx
from _common import Row, asyncpg_dsn, free_port, pg_database, postgres_reachable, print_table

from metering.config import Settings, set_settings
from metering.db import Database
from metering.periods import period_of
from metering.providers.service import ProviderRegistration, provider_service
from tests.support.servers import wait_until_up

ROOT = Path(__file__).resolve().parent.parent
USERS = 1_000
BATCH = 10_000
SECRET_KEY = base64.urlsafe_b64encode(b"c" * 32).decode()
TOKEN = "bench-provider-token"
COLUMNS = [
    "provider_id",
    "request_id",
    "user_name",
    "billing_account",
    "bill_to_flagged",
    "model",
    "custom_key",
    "started_at",
    "period",
    "content_hash",
    "status",
    "estimate_nano_usd",
    "received_at",
    "attempts",
]


async def seed(url: str, *, requests: int, baseline: int, cost_endpoint: str, fillfactor: int | None = None) -> None:
    """Users, the two providers, and the pending records (COPY): ``sim`` for the job, ``raw`` for the baseline.

    ``fillfactor`` overrides the one the migrations give ``usage_records`` (70: room on each
    page so that lease writes, which touch no indexed column, become HOT updates).
    """
    set_settings(
        Settings(
            environment="embedded", database_url=url, secret_key=SECRET_KEY, service_tokens="x", jwt_secret="x" * 32
        )
    )
    database = Database(url)
    url_of_provider = cost_endpoint.rsplit("/billing", 1)[0]
    registrations = {
        "sim": ProviderRegistration(
            url=url_of_provider, pricing="cost_endpoint", cost_endpoint=cost_endpoint, cost_token=TOKEN
        ),
        # Priced by compute time: the job asks no cost endpoint for its rows, which stay the baseline's.
        "raw": ProviderRegistration(
            url=url_of_provider, pricing="compute_time", hardware_prices_nano_usd_per_second={"cpu": 1}
        ),
    }
    async with database.session_scope() as session:
        for provider_id, registration in registrations.items():
            await provider_service.upsert(session, provider_id=provider_id, registration=registration)
    await database.dispose()
    now = datetime.now(UTC)
    started = now - timedelta(minutes=30) if (now.day, now.hour) != (1, 0) else now
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if fillfactor:
            await connection.execute(f"ALTER TABLE usage_records SET (fillfactor = {int(fillfactor)})")
        await connection.copy_records_to_table(
            "accounts",
            columns=["name", "kind", "plan", "seats", "status", "created_at", "updated_at"],
            records=[(f"user-{i:05d}", "user", "pro", 1, "active", now, now) for i in range(USERS)],
        )
        for provider_id, count in (("sim", requests), ("raw", baseline)):
            records = (
                (
                    provider_id,
                    f"{provider_id}-{i:08d}",
                    f"user-{i % USERS:05d}",
                    f"user-{i % USERS:05d}",
                    False,
                    "org/model",
                    False,
                    started,
                    period_of(started),
                    f"{i:032x}",
                    "pending",
                    0,
                    now,
                    0,
                )
                for i in range(count)
            )
            await connection.copy_records_to_table("usage_records", columns=COLUMNS, records=records)
        await connection.execute("ANALYZE usage_records")
    finally:
        await connection.close()


def preload(base_url: str, requests: int) -> None:
    chunk = 100_000
    with httpx.Client(timeout=120) as client:
        for start in range(0, requests, chunk):
            ids = [f"sim-{i:08d}" for i in range(start, min(start + chunk, requests))]
            client.post(f"{base_url}/_sim/costs", json={"requestIds": ids}).raise_for_status()


def drain_with_workers(url: str, workers: int) -> tuple[float, list[str]]:
    env = {
        **os.environ,
        "METERING_ENVIRONMENT": "embedded",
        "METERING_DATABASE_URL": url,
        "METERING_SECRET_KEY": SECRET_KEY,
        "METERING_SERVICE_TOKENS": "bench",
        "METERING_JWT_SECRET": "bench-jwt-secret-long-enough-for-hs256",
        "METERING_COST_BATCH_SIZE": str(BATCH),
    }
    command = [sys.executable, "-m", "cli.main", "jobs", "run-once", "collect-costs"]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    outputs = [process.communicate() for process in processes]
    elapsed = time.perf_counter() - started
    for process, (_, err) in zip(processes, outputs):
        if process.returncode != 0:
            raise SystemExit(f"worker failed:\n{err[-3000:]}")
    return elapsed, [out for out, _ in outputs]


def parse_summary(text: str) -> dict[str, float]:
    """Totals of a worker's summary: pass seconds, batches, priced, and the step timings of ``sim``."""
    head = re.search(r"(\d+) batches, priced=(\d+) in ([\d.]+)s", text)
    line = next(line for line in text.splitlines() if line.strip().startswith("sim:"))
    steps = {step: float(value) for step, value in re.findall(r"(claim|http|validate|apply)=([\d.]+)s", line)}
    return {"batches": int(head.group(1)), "priced": int(head.group(2)), "seconds": float(head.group(3)), **steps}


async def raw_baseline(url: str, connections: int, batches: int) -> float:
    """Seconds to run ``batches`` SKIP LOCKED claims, each pricing its 10k rows and posting them in one
    transaction, plain asyncpg, on as many connections as the job has workers: the same concurrency,
    so throughputs compare."""
    dsn = asyncpg_dsn(url)
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "INSERT INTO ledger_accounts (code, kind, owner, period, balance_nano_usd) VALUES "
            "('baseline:receivable', 'receivable', 'baseline', '0000-00', 0), ('baseline:payable', 'payable', 'raw', '0000-00', 0) "
            "ON CONFLICT (code) DO NOTHING"
        )
        ids = dict(await setup.fetch("SELECT code, id FROM ledger_accounts WHERE code LIKE 'baseline:%'"))
    finally:
        await setup.close()
    receivable, payable = ids["baseline:receivable"], ids["baseline:payable"]
    left = batches

    async def drain() -> None:
        nonlocal left
        connection = await asyncpg.connect(dsn)
        try:
            while left > 0:
                left -= 1
                # The job's own shape on PostgreSQL: rows locked SKIP LOCKED, priced and posted in one transaction.
                async with connection.transaction():
                    rows = await connection.fetch(
                        "SELECT id, request_id FROM usage_records WHERE provider_id = 'raw' AND status = 'pending' "
                        "LIMIT $1 FOR UPDATE SKIP LOCKED",
                        BATCH,
                    )
                    if not rows:
                        raise RuntimeError("the baseline ran out of rows")
                    record_ids = [row["id"] for row in rows]
                    costs = [100_000 + row["id"] % 400_000 for row in rows]
                    await connection.execute(
                        "UPDATE usage_records u SET status = 'priced', cost_nano_usd = c.cost, priced_at = now() "
                        "FROM unnest($1::bigint[], $2::bigint[]) AS c(id, cost) WHERE u.id = c.id AND u.status = 'pending'",
                        record_ids,
                        costs,
                    )
                    transactions = await connection.fetch(
                        "INSERT INTO ledger_transactions (kind, idempotency_key, account_name, provider_id, period, usage_record_id, created_at) "
                        "SELECT 'request_cost', 'baseline:' || id, NULL, 'raw', '0000-00', id, now() FROM unnest($1::bigint[]) AS id RETURNING id",
                        record_ids,
                    )
                    await connection.execute(
                        "INSERT INTO ledger_entries (transaction_id, ledger_account_id, amount_nano_usd, period) "
                        "SELECT t, a, v, '0000-00' FROM unnest($1::bigint[], $2::bigint[]) AS x(t, c), "
                        "LATERAL (VALUES ($3::bigint, x.c), ($4::bigint, -x.c)) AS e(a, v)",
                        [row["id"] for row in transactions],
                        costs,
                        receivable,
                        payable,
                    )
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(drain() for _ in range(connections)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 requests")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--fillfactor",
        type=int,
        default=None,
        help="experiment: override the usage_records fillfactor of the schema (70)",
    )
    args = parser.parse_args()
    requests = 50_000 if args.quick else args.requests
    baseline = min(requests, 200_000)
    if not postgres_reachable():
        raise SystemExit("PostgreSQL is not reachable")
    port = free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "simulate-provider", "--port", str(port), "--seed", "1", "--token", TOKEN],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base_url}/_sim/faults", process=simulator)
        with pg_database("metering_bench_collect") as (_, url):
            t0 = time.perf_counter()
            asyncio.run(
                seed(
                    url,
                    requests=requests,
                    baseline=baseline,
                    cost_endpoint=f"{base_url}/billing/costs",
                    fillfactor=args.fillfactor,
                )
            )
            preload(base_url, requests)
            print(
                f"seeded {requests:,} pending requests (+{baseline:,} for the baseline) in {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            # The baseline runs half before the drain and half after, so a machine whose speed drifts
            # during the run weighs on both figures alike.
            raw_batches = baseline // BATCH
            raw_seconds = asyncio.run(raw_baseline(url, args.workers, raw_batches // 2))
            wall, outputs = drain_with_workers(url, args.workers)
            passes = [parse_summary(out) for out in outputs]
            raw_seconds += asyncio.run(raw_baseline(url, args.workers, raw_batches - raw_batches // 2))
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    priced = sum(p["priced"] for p in passes)
    batches = sum(p["batches"] for p in passes) or 1
    draining = max(p["seconds"] for p in passes)
    per_batch = {step: sum(p[step] for p in passes) / batches for step in ("claim", "http", "validate", "apply")}
    raw_rate = raw_batches * BATCH / raw_seconds
    print_table(
        f"collect-costs: {requests:,} pending, {args.workers} workers, batches of {BATCH:,} (PostgreSQL"
        + (f", usage_records fillfactor {args.fillfactor})" if args.fillfactor else ")"),
        [
            Row(
                "priced",
                priced,
                "requests",
                f"{requests:,}",
                "exactly the backlog" if priced == requests else "MISMATCH",
            ),
            Row("priced/s end to end", priced / wall, "req/s", ">= 20,000", f"{wall:.1f}s incl. process start"),
            Row(
                "priced/s while draining",
                priced / draining,
                "req/s",
                ">= 20,000",
                f"{draining:.1f}s, longest worker pass",
            ),
            Row(
                "10k batch, one worker's",
                sum(per_batch.values()),
                "s",
                "",
                f"mean of {batches}, {args.workers} at once",
            ),
            *(Row(f"  {step}", value, "s", "", "") for step, value in per_batch.items()),
            Row(
                "10k batch, effective",
                draining / batches * BATCH / (priced / batches),
                "s",
                "<= 0.5",
                "drain time per 10k priced",
            ),
            Row(
                "raw baseline",
                raw_rate,
                "req/s",
                "",
                f"claim + UPDATE/INSERT, asyncpg, {raw_batches} batches on {args.workers} connections, half before the drain",
            ),
            Row("raw baseline 10k batch, effective", raw_seconds / max(raw_batches, 1), "s", "", ""),
            Row(
                "ratio end to end / raw",
                priced / wall / raw_rate,
                "ratio",
                ">= 0.5",
                "the cost of settle, ledger, HTTP, processes",
            ),
        ],
    )


if __name__ == "__main__":
    main()
