"""Years of data: the hot path, the usage series, a ledger export and verify as the tables grow (PostgreSQL).

For each size (usage records of history: ``--sizes 1M,10M,30M``) a scratch database is loaded
with six months of history (five closed months and the current one, up to two hours ago) by
COPY: thousands of accounts, skewed as traffic is (three huge orgs carry 45% of the requests,
the largest a quarter; 47 small orgs 15%; 5,000 pro users the rest, Zipf-distributed), every
request priced (1% custom-key), each with its cost transaction and 2-3 ledger entries, the
credits of each account's month granted and used before pay-as-you-go, and the account-period
totals, ledger balances, request keys and hourly usage totals they imply, so ``metering verify``
finds the ledger clean. (The rows go in with triggers and foreign-key checks off, the request
keys and folded hourly and daily usage totals are then built in bulk with the migrations' own SQL, and the
tables are vacuumed and analysed, as autovacuum would leave them; a checkpoint then writes out what the
load dirtied, so no figure pays for it.) Then, in one run, against a
real ``metering serve`` and the project's provider simulator:

- authorize warm p99: open loop at ``--authorize-rate`` over accounts that decided before;
- ingest records/s: ``--live-records`` new records POSTed to the real ingest route, 4 senders;
- collection priced/s: those records' costs preloaded in the simulator, drained by 2
  ``metering jobs run-once collect-costs`` processes (their own pass time);
  (each of these three is taken twice, ingest and collection on half of the records each time,
  and the better kept: a neighbour's burst on a shared machine is not a cost of the data's size;)
- the usage series of the largest org for the last full month, through the HTTP route (median);
- a ledger export (CSV) of the last full month, in-process as ``metering export`` runs it;
- ``metering verify``: seconds, and that it is clean.

A table per figure and size follows, with each figure at the largest size as a ratio of the
smallest. Verify reads every live row once (each check aggregates in the database), so its
time is compared with the rows it reads. Before the largest size the free disk of
PostgreSQL's data directory is checked (``df``) against what the previous size used per row.
Each scratch database is dropped once measured.

    python bench/growth.py [--sizes 1M,10M,30M] [--quick]

Targets: at the largest size every hot-path figure (authorize p99, ingest, collection) >= 0.8 of
its value at the smallest (for a latency: smallest / largest); the usage series <= 200 ms at
every size; verify's time grows no faster than the rows it reads.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import importlib.util
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import asyncpg
import httpx
import orjson
from _common import Row, asyncpg_dsn, free_port, pg_database, postgres_reachable, print_table, serve

from metering.config import Settings, set_settings
from metering.db import Database
from metering.partitions.repository import PARTITIONED_TABLES
from metering.partitions.service import partitions_service
from metering.periods import period_bounds, period_of, previous_period
from metering.providers.service import ProviderRegistration, provider_service
from tests.support.servers import wait_until_up

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = base64.urlsafe_b64encode(b"b" * 32).decode()  # the key _common.serve gives the server
JWT_SECRET = "bench-jwt-secret-long-enough-for-hs256"
TOKEN = "bench-provider-token"
MONTHS = 6
USERS = 5_000
BIG_ORGS = {"big-0": (0.25, 300), "big-1": (0.12, 200), "big-2": (0.08, 150)}  # share of requests, members
SMALL_ORGS = 47
SMALL_ORG_MEMBERS = 5
SMALL_ORGS_SHARE = 0.15
MODELS = [f"org/model-{i}" for i in range(10)]
HISTORY_PROVIDERS = (("together", 0.5), ("fireworks-ai", 0.3), ("sim", 0.2))
CREDITS_PER_SEAT = 2_000_000_000
COPY_CHUNK = 200_000
HOT_RATIO_TARGET = 0.8
USAGE_TARGET_MS = 200.0
DEFAULT_BYTES_PER_RECORD = 2_000
# The hot-path figures are each taken this many times, the best kept: the machine may be shared, and a
# neighbour's burst should not pass for a cost of the data's size.
ROUNDS = 2


def parse_size(text: str) -> int:
    text = text.strip().upper()
    factor = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * factor)


def settings_for(url: str, data_dir: str) -> Settings:
    return Settings(
        environment="embedded",
        database_url=url,
        data_dir=Path(data_dir),
        service_tokens=_common.SERVICE_TOKEN,
        secret_key=SECRET_KEY,
        jwt_secret=JWT_SECRET,
    )


# --- who pays: skewed accounts ---


@dataclass
class Population:
    users: list[str]
    orgs: dict[str, list[str]]  # org → members
    seats: dict[str, int]
    plans: dict[str, str]
    payers: list[str]  # payer per cumulative-weight slot
    cumulative: list[float]

    def pick(self, rng: random.Random) -> tuple[str, str, str | None]:
        """(user, billing account, bill_to) of one request."""
        payer = self.payers[bisect.bisect(self.cumulative, rng.random() * self.cumulative[-1])]
        members = self.orgs.get(payer)
        if members is None:
            return payer, payer, None
        return members[rng.randrange(len(members))], payer, payer


def population() -> Population:
    users = [f"u-{i:05d}" for i in range(USERS)]
    orgs: dict[str, list[str]] = {}
    cursor = 0
    for name, (_, members) in BIG_ORGS.items():
        orgs[name] = users[cursor : cursor + members]
        cursor += members
    for i in range(SMALL_ORGS):
        orgs[f"org-{i:02d}"] = users[cursor : cursor + SMALL_ORG_MEMBERS]
        cursor += SMALL_ORG_MEMBERS
    weights: dict[str, float] = {name: share for name, (share, _) in BIG_ORGS.items()}
    weights.update({f"org-{i:02d}": SMALL_ORGS_SHARE / SMALL_ORGS for i in range(SMALL_ORGS)})
    user_share = 1 - sum(weights.values())
    zipf = [1 / (rank + 1) ** 1.1 for rank in range(USERS)]
    total = sum(zipf)
    weights.update({user: user_share * z / total for user, z in zip(users, zipf, strict=True)})
    payers = list(weights)
    cumulative = list(itertools.accumulate(weights[p] for p in payers))
    seats = {name: len(members) for name, members in orgs.items()} | dict.fromkeys(users, 1)
    plans = dict.fromkeys(orgs, "team") | dict.fromkeys(users, "pro")
    return Population(users, orgs, seats, plans, payers, cumulative)


# --- history, by COPY ---

USAGE_COLUMNS = [
    "id",
    "provider_id",
    "request_id",
    "user_name",
    "bill_to",
    "billing_account",
    "bill_to_flagged",
    "model",
    "task",
    "custom_key",
    "started_at",
    "period",
    "input_tokens",
    "output_tokens",
    "content_hash",
    "status",
    "estimate_nano_usd",
    "cost_nano_usd",
    "received_at",
    "priced_at",
    "attempts",
]
TRANSACTION_COLUMNS = [
    "id",
    "kind",
    "idempotency_key",
    "account_name",
    "provider_id",
    "period",
    "usage_record_id",
    "memo",
    "plan",
    "created_at",
]
ENTRY_COLUMNS = ["id", "transaction_id", "ledger_account_id", "amount_nano_usd", "period"]


@dataclass
class Ledger:
    """The ledger as it is generated: account ids and balances, per (account, period) totals."""

    account_ids: dict[str, int] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    # (account, period) → [granted, used, payg]
    totals: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    transaction_id: int = 0
    entry_id: int = 0

    def account(self, code: str) -> int:
        if code not in self.account_ids:
            self.account_ids[code] = len(self.account_ids) + 1
            self.balances[code] = 0
        return self.account_ids[code]


def months_of_history(now: datetime) -> list[str]:
    months = [period_of(now)]
    while len(months) < MONTHS:
        months.insert(0, previous_period(months[0]))
    return months


def history(
    size: int, people: Population, now: datetime, ledger: Ledger, seed: int = 1
) -> Iterator[tuple[list, list, list]]:
    """Chunks of (usage rows, transaction rows, entry rows), in time order; ``ledger`` keeps their sums."""
    rng = random.Random(seed)
    months = months_of_history(now)
    providers = [name for name, _ in HISTORY_PROVIDERS]
    provider_weights = list(itertools.accumulate(w for _, w in HISTORY_PROVIDERS))
    usage_id = 0
    for index, month in enumerate(months):
        start, end = period_bounds(month)
        end = min(end, now - timedelta(hours=2))
        count = size // MONTHS + (size % MONTHS if index == len(months) - 1 else 0)
        span = (end - start).total_seconds()
        offsets = sorted(rng.random() * span for _ in range(count))
        usage: list[tuple] = []
        transactions: list[tuple] = []
        entries: list[tuple] = []
        for offset in offsets:
            usage_id += 1
            user, payer, bill_to = people.pick(rng)
            provider = providers[bisect.bisect(provider_weights, rng.random())]
            started = start + timedelta(seconds=offset)
            custom = rng.random() < 0.01
            cost = None if custom else rng.randrange(1_000_000, 40_000_000)
            usage.append(
                (
                    usage_id,
                    provider,
                    f"{provider}-h{usage_id:011d}",
                    user,
                    bill_to,
                    payer,
                    False,
                    MODELS[usage_id % len(MODELS)],
                    "conversational",
                    custom,
                    started,
                    month,
                    400 + usage_id % 500,
                    100 + usage_id % 300,
                    f"{usage_id:032x}",
                    "custom_key" if custom else "priced",
                    0 if custom else cost,
                    cost,
                    started + timedelta(seconds=1),
                    None if custom else started + timedelta(seconds=90),
                    0 if custom else 1,
                )
            )
            if cost is None:
                continue
            totals = ledger.totals.get((payer, month))
            plan = people.plans[payer]
            if totals is None:
                granted = CREDITS_PER_SEAT * people.seats[payer]
                totals = ledger.totals[(payer, month)] = [granted, 0, 0]
                ledger.transaction_id += 1
                transactions.append(
                    (
                        ledger.transaction_id,
                        "credit_grant",
                        f"grant:{payer}:{month}",
                        payer,
                        None,
                        month,
                        None,
                        f"{plan} plan, {people.seats[payer]} seat(s)",
                        None,
                        start,
                    )
                )
                _entries(
                    ledger,
                    entries,
                    month,
                    ((f"credits_expense:{month}", granted), (f"credits:{payer}:{month}", -granted)),
                )
            from_credits = min(cost, totals[0] - totals[1])
            totals[1] += from_credits
            totals[2] += cost - from_credits
            ledger.transaction_id += 1
            transactions.append(
                (
                    ledger.transaction_id,
                    "request_cost",
                    f"cost:{usage_id}",
                    payer,
                    provider,
                    month,
                    usage_id,
                    None,
                    plan,
                    started + timedelta(seconds=90),
                )
            )
            lines = [(f"payable:{provider}:{month}", -cost)]
            if from_credits:
                lines.append((f"credits:{payer}:{month}", from_credits))
            if cost - from_credits:
                lines.append((f"receivable:{payer}:{month}", cost - from_credits))
            _entries(ledger, entries, month, lines)
            if len(usage) >= COPY_CHUNK:
                yield usage, transactions, entries
                usage, transactions, entries = [], [], []
        if usage or transactions:
            yield usage, transactions, entries


def _entries(ledger: Ledger, out: list[tuple], month: str, lines: list[tuple[str, int]] | tuple) -> None:
    for code, amount in lines:
        ledger.entry_id += 1
        account_id = ledger.account(code)
        ledger.balances[code] += amount
        out.append((ledger.entry_id, ledger.transaction_id, account_id, amount, month))


def _migration(name: str):  # type: ignore[no-untyped-def]
    path = ROOT / "migrations" / "versions" / name
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


async def load(url: str, size: int, people: Population, now: datetime, sim_url: str) -> float:
    """The history of ``size`` records; returns the seconds it took."""
    started = time.perf_counter()
    set_settings(settings_for(url, tempfile.gettempdir()))
    database = Database(url)
    try:
        async with database.session_scope() as session:
            for provider_id, _ in HISTORY_PROVIDERS:
                base = sim_url if provider_id == "sim" else "http://127.0.0.1:9"
                registration = ProviderRegistration(
                    url=base, pricing="cost_endpoint", cost_endpoint=f"{base}/billing/costs", cost_token=TOKEN
                )
                await provider_service.upsert(session, provider_id=provider_id, registration=registration)
        # The months' partitions, as the create-partitions job made them when each month came.
        for table in PARTITIONED_TABLES:
            for month in months_of_history(now):
                async with database.session_scope() as session:
                    if month not in await partitions_service.months(session, table=table):
                        await partitions_service.create_month(session, table=table, period=month)
    finally:
        await database.dispose()
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        # Loaded as a restore would be: no trigger and no foreign-key check per row (the rows are
        # consistent by construction, and verify checks them); what the triggers keep is built below.
        await connection.execute("SET session_replication_role = replica")
        accounts = [
            (name, "org" if name in people.orgs else "user", people.plans[name], people.seats[name], "active", now, now)
            for name in [*people.users, *people.orgs]
        ]
        await connection.copy_records_to_table(
            "accounts",
            columns=["name", "kind", "plan", "seats", "status", "created_at", "updated_at"],
            records=accounts,
        )
        await connection.copy_records_to_table(
            "memberships",
            columns=["org_name", "user_name", "role", "created_at"],
            records=[
                (org, user, "admin" if index == 0 else "write", now)
                for org, members in people.orgs.items()
                for index, user in enumerate(members)
            ],
        )
        rows = 0
        ledger = Ledger()
        for usage, transactions, entries in history(size, people, now, ledger):
            await connection.copy_records_to_table("usage_records", columns=USAGE_COLUMNS, records=usage)
            await connection.copy_records_to_table(
                "ledger_transactions", columns=TRANSACTION_COLUMNS, records=transactions
            )
            await connection.copy_records_to_table("ledger_entries", columns=ENTRY_COLUMNS, records=entries)
            rows += len(usage)
            if rows % 2_000_000 < COPY_CHUNK:
                print(f"    {rows:,} records loaded ({time.perf_counter() - started:.0f} s)", flush=True)
        from metering.ledger import codes

        await connection.copy_records_to_table(
            "ledger_accounts",
            columns=["id", "code", "kind", "owner", "period", "balance_nano_usd"],
            records=[
                (id_, code, parsed.kind, parsed.owner, parsed.period, ledger.balances[code])
                for code, id_ in ledger.account_ids.items()
                for parsed in [codes.parse(code)]
            ],
        )
        await connection.copy_records_to_table(
            "account_periods",
            columns=[
                "account_name",
                "period",
                "granted_seats",
                "credits_granted_nano_usd",
                "credits_used_nano_usd",
                "payg_nano_usd",
                "written_off_nano_usd",
                "pending_estimate_nano_usd",
                "held_nano_usd",
                "pending_payg_only_nano_usd",
                "held_payg_only_nano_usd",
                "credits_granted_ahead",
            ],
            records=[
                (account, period, people.seats[account], granted, used, payg, 0, 0, 0, 0, 0, False)
                for (account, period), (granted, used, payg) in ledger.totals.items()
            ],
        )
        months = months_of_history(now)
        await connection.executemany(
            "INSERT INTO periods (period, status, closed_at) VALUES ($1, 'closed', $2)",
            [(month, period_bounds(month)[1] + timedelta(days=2)) for month in months[:-1]],
        )
        for table in ("usage_records", "ledger_transactions", "ledger_entries", "ledger_accounts"):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        await connection.execute("SET session_replication_role = origin")
        print(f"    keys and usage totals ({time.perf_counter() - started:.0f} s)", flush=True)
        await connection.execute(
            "INSERT INTO usage_request_keys (provider_id, request_id, period, usage_record_id) "
            "SELECT provider_id, request_id, period, id FROM usage_records ORDER BY provider_id, request_id"
        )
        hourly = _migration("2026-11-26-0300_usage_rollups_hourly.py")
        await connection.execute(
            f"INSERT INTO usage_rollups ({hourly.COLUMNS}, folded) "
            f"SELECT *, true FROM ({hourly.rollup(hourly.signed('usage_records', '1'))}) AS rolled"
        )
        await connection.execute(_migration("2026-12-07-0800_usage_rollups_daily.py").DAY_ROWS)
        print(f"    vacuum analyze ({time.perf_counter() - started:.0f} s)", flush=True)
        await connection.execute("VACUUM (ANALYZE)")
    finally:
        await connection.close()
    seconds = time.perf_counter() - started
    await quiesce(url)
    return seconds


async def quiesce(url: str, limit_seconds: float = 900) -> None:
    """Let the load's own aftermath pass before measuring: a checkpoint of what it dirtied, and the
    autovacuum workers it woke. Otherwise the first figures pay for writing gigabytes in the background."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute("CHECKPOINT")
        deadline = time.monotonic() + limit_seconds
        while time.monotonic() < deadline:
            workers = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            )
            if not workers:
                break
            await asyncio.sleep(2)
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


# --- the live figures ---


def live_records(people: Population, count: int, now: datetime, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    start = now - timedelta(minutes=50)
    records = []
    for i in range(count):
        user, _, bill_to = people.pick(rng)
        records.append(
            {
                "request_id": f"sim-live-{i:09d}",
                "provider": "sim",
                "user": user,
                "bill_to": bill_to,
                "model": MODELS[i % len(MODELS)],
                "task": "conversational",
                "started_at": (start + timedelta(milliseconds=i % 2_400_000)).isoformat(),
                "input_tokens": 512,
                "output_tokens": 128,
            }
        )
    return records


async def post_records(base_url: str, records: list[dict], senders: int = 4, batch: int = 1_000) -> float:
    """Records/s through the ingest route; every record must be accepted."""
    bodies = [orjson.dumps({"records": records[i : i + batch]}) for i in range(0, len(records), batch)]
    headers = {"Authorization": f"Bearer {_common.SERVICE_TOKEN}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    accepted = 0
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300, limits=limits) as client:
        pending = iter(bodies)

        async def sender() -> None:
            nonlocal accepted
            for body in pending:
                response = await client.post("/internal/v1/usage", content=body)
                response.raise_for_status()
                answer = response.json()
                if answer["rejected"]:
                    raise RuntimeError(f"records rejected: {answer['rejected'][:3]}")
                accepted += answer["accepted"]

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        seconds = time.perf_counter() - began
    if accepted != len(records):
        raise RuntimeError(f"{accepted} of {len(records)} records accepted")
    return len(records) / seconds


def authorize_bodies(people: Population, count: int, seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        user, _, bill_to = people.pick(rng)
        bodies.append(orjson.dumps({"user": user, "bill_to": bill_to, "provider": "sim", "model": MODELS[0]}))
    return bodies


def authorize_p99(base_url: str, people: Population, rate: float, seconds: float) -> tuple[float, float, int]:
    """(p50, p99, errors) of an open loop over accounts that decided before (each body is sent once first)."""
    import authorize

    port = int(base_url.rsplit(":", 1)[1])
    bodies = authorize_bodies(people, int(rate * seconds))
    warm = list(dict.fromkeys(bodies))
    with authorize.generator_collector_paused():
        asyncio.run(authorize.open_loop(port, warm, rate, 32, None))
        loops = [asyncio.run(authorize.open_loop(port, bodies, rate, 32, None)) for _ in range(ROUNDS)]
    best = min(loops, key=lambda loop: loop.p99)
    return best.p50, best.p99, sum(loop.errors for loop in loops)


def collect(url: str, sim_url: str, records: list[dict], workers: int = 2) -> float:
    """Priced/s of ``workers`` collect-costs processes draining the live records (their longest pass)."""
    from collect import BATCH, parse_summary

    costs = {record["request_id"]: 1_000_000 + i % 5_000_000 for i, record in enumerate(records)}
    with httpx.Client(timeout=120) as client:
        ids = list(costs)
        for start in range(0, len(ids), 100_000):
            part = ids[start : start + 100_000]
            client.post(f"{sim_url}/_sim/costs", json={"requestIds": part}).raise_for_status()
    env = {
        **os.environ,
        "METERING_ENVIRONMENT": "embedded",
        "METERING_DATABASE_URL": url,
        "METERING_SECRET_KEY": SECRET_KEY,
        "METERING_SERVICE_TOKENS": _common.SERVICE_TOKEN,
        "METERING_JWT_SECRET": JWT_SECRET,
        "METERING_COST_BATCH_SIZE": str(BATCH),
    }
    command = [sys.executable, "-m", "cli.main", "jobs", "run-once", "collect-costs"]
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    outputs = [process.communicate() for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"collect-costs failed:\n{err[-3000:]}")
    passes = [parse_summary(out) for out, _ in outputs]
    priced = sum(int(p["priced"]) for p in passes)
    if priced != len(records):
        raise RuntimeError(f"collection priced {priced} of {len(records)}")
    return priced / max(p["seconds"] for p in passes)


def usage_series_ms(base_url: str, org: str, admin: str, month: str, repeats: int = 10) -> tuple[float, int]:
    from tests.factories.billing_data import make_token

    start, end = period_bounds(month)
    last_day = (end - timedelta(days=1)).date()
    headers = {"Authorization": f"Bearer {make_token(admin, key=JWT_SECRET)}"}
    path = f"/v1/accounts/{org}/usage?from={start.date()}&to={last_day}&interval=day&group_by=member"
    timings = []
    points = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        for attempt in range(repeats + 1):
            began = time.perf_counter()
            response = client.get(path)
            response.raise_for_status()
            if attempt:
                timings.append((time.perf_counter() - began) * 1000)
            points = sum(len(group["points"]) for group in response.json()["series"])
    return statistics.median(timings), points


def export_rate(url: str, month: str) -> tuple[float, int]:
    from cli.export import _export

    with tempfile.TemporaryDirectory(prefix="metering-growth-export-") as tmp:
        began = time.perf_counter()
        rows = asyncio.run(_export(url, "ledger", month, "csv", Path(tmp) / "ledger.csv", show_progress=False))
        seconds = time.perf_counter() - began
    return rows / seconds, rows


def verify_seconds(url: str) -> tuple[float, bool, int]:
    from cli.verify import _verify

    began = time.perf_counter()
    report = asyncio.run(_verify(url))
    seconds = time.perf_counter() - began
    for check in report.checks:
        for line in check.breaches[:3]:
            print(f"  BREACH {check.name}: {line}", flush=True)
    return seconds, report.ok, report.breach_count


async def live_rows(url: str) -> int:
    """The rows verify reads: usage records, ledger transactions and entries (every month is live)."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        total = 0
        for table in ("usage_records", "ledger_transactions", "ledger_entries"):
            total += await connection.fetchval(f"SELECT count(*) FROM {table}")
        return total
    finally:
        await connection.close()


async def database_bytes(url: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await connection.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await connection.close()


async def free_bytes() -> int:
    """Free space of PostgreSQL's data directory, as ``df`` reports it."""
    connection = await asyncpg.connect(_common.PG_ADMIN_DSN)
    try:
        directory = await connection.fetchval("SHOW data_directory")
    finally:
        await connection.close()
    out = subprocess.run(["df", "-B1", "--output=avail", directory], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@dataclass
class Figures:
    size: int
    load_seconds: float = 0.0
    database_bytes: int = 0
    authorize_p50: float = 0.0
    authorize_p99: float = 0.0
    authorize_errors: int = 0
    ingest: float = 0.0
    collect: float = 0.0
    usage_ms: float = 0.0
    usage_points: int = 0
    export: float = 0.0
    export_rows: int = 0
    verify_seconds: float = 0.0
    verify_ok: bool = False
    verify_rows: int = 0


def measure(size: int, args: argparse.Namespace, people: Population) -> Figures:
    figures = Figures(size)
    now = datetime.now(UTC)
    last_month = previous_period(period_of(now))
    port = free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "simulate-provider", "--port", str(port), "--seed", "1", "--token", TOKEN],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    sim_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{sim_url}/_sim/faults", process=simulator)
        with pg_database(f"metering_bench_growth_{size}") as (_, url):
            print(f"  loading {size:,} records of history", flush=True)
            figures.load_seconds = asyncio.run(load(url, size, people, now, sim_url))
            figures.database_bytes = asyncio.run(database_bytes(url))
            records = live_records(people, args.live_records, now)
            share = len(records) // ROUNDS
            with serve(url) as base_url:
                print("  authorize", flush=True)
                figures.authorize_p50, figures.authorize_p99, figures.authorize_errors = authorize_p99(
                    base_url, people, args.authorize_rate, args.authorize_seconds
                )
                for part in (records[i * share : (i + 1) * share] for i in range(ROUNDS)):
                    print("  ingest, then collect", flush=True)
                    figures.ingest = max(figures.ingest, asyncio.run(post_records(base_url, part)))
                    figures.collect = max(figures.collect, collect(url, sim_url, part))
                print("  usage series", flush=True)
                largest = next(iter(BIG_ORGS))
                figures.usage_ms, figures.usage_points = usage_series_ms(
                    base_url, largest, people.orgs[largest][0], last_month
                )
            print("  export", flush=True)
            set_settings(settings_for(url, tempfile.gettempdir()))
            figures.export, figures.export_rows = export_rate(url, last_month)
            print("  verify", flush=True)
            figures.verify_rows = asyncio.run(live_rows(url))
            figures.verify_seconds, figures.verify_ok, breaches = verify_seconds(url)
            if not figures.verify_ok:
                print(f"  verify found {breaches} breach(es)", flush=True)
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    return figures


def _ratio(large: float, small: float) -> float:
    return large / small if small else 0.0


def table(results: list[Figures]) -> list[Row]:
    rows: list[Row] = []
    for f in results:
        label = f"{f.size / 1e6:g}M"
        rows += [
            Row(
                f"{label}: load (COPY, keys, totals, vacuum)",
                f.load_seconds,
                "s",
                note=f"{f.database_bytes / 2**30:.1f} GiB",
            ),
            Row(
                f"{label}: authorize warm p99",
                f.authorize_p99,
                "ms",
                note=f"p50 {f.authorize_p50:.1f} ms, {f.authorize_errors} errors",
            ),
            Row(f"{label}: ingest", f.ingest, "records/s"),
            Row(f"{label}: collection", f.collect, "priced/s"),
            Row(
                f"{label}: usage series, largest org, a month",
                f.usage_ms,
                "ms",
                f"<= {USAGE_TARGET_MS:.0f}",
                f"{f.usage_points} points; " + ("met" if f.usage_ms <= USAGE_TARGET_MS else "MISSED"),
            ),
            Row(f"{label}: ledger export, a month", f.export, "rows/s", note=f"{f.export_rows:,} rows"),
            Row(
                f"{label}: verify",
                f.verify_seconds,
                "s",
                "clean",
                f"{f.verify_rows:,} rows read; " + ("clean" if f.verify_ok else "BREACHED"),
            ),
        ]
    if len(results) > 1:
        small, large = results[0], results[-1]
        name = f"{large.size / 1e6:g}M / {small.size / 1e6:g}M"
        hot = [
            ("authorize warm p99 (smaller is better: 1M / large)", _ratio(small.authorize_p99, large.authorize_p99)),
            ("ingest records/s", _ratio(large.ingest, small.ingest)),
            ("collection priced/s", _ratio(large.collect, small.collect)),
        ]
        for figure, ratio in hot:
            verdict = "met" if ratio >= HOT_RATIO_TARGET else "MISSED"
            rows.append(Row(f"{name}: {figure}", ratio, "ratio", f">= {HOT_RATIO_TARGET}", verdict))
        rows.append(Row(f"{name}: usage series ms", _ratio(large.usage_ms, small.usage_ms), "ratio"))
        rows.append(
            Row(f"{name}: ledger export rows/s", _ratio(large.export, small.export), "ratio", note="a month each")
        )
        time_ratio = _ratio(large.verify_seconds, small.verify_seconds)
        rows_ratio = _ratio(large.verify_rows, small.verify_rows)
        rows.append(
            Row(
                f"{name}: verify time",
                time_ratio,
                "ratio",
                f"<= {rows_ratio:.1f}",
                f"rows read grew {rows_ratio:.1f}x; " + ("met" if time_ratio <= rows_ratio else "MISSED"),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,30M", help="usage records of history per size (default 1M,10M,30M)")
    parser.add_argument("--quick", action="store_true", help="sizes 100K,300K and a small live load: it all runs")
    parser.add_argument("--live-records", type=int, default=200_000, help="records ingested, then collected")
    parser.add_argument("--authorize-rate", type=float, default=500.0)
    parser.add_argument("--authorize-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.live_records, args.authorize_seconds = "100K,300K", 20_000, 5.0
    sizes = sorted(parse_size(size) for size in args.sizes.split(","))
    if not postgres_reachable():
        print("PostgreSQL is not reachable", file=sys.stderr)
        return 1
    people = population()
    results: list[Figures] = []
    for size in sizes:
        if size == sizes[-1] and results:
            per_record = results[-1].database_bytes / results[-1].size
            need = int(per_record * size * 1.3)
            free = asyncio.run(free_bytes())
            print(f"disk: {size:,} records need ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free (df)", flush=True)
            if need > free:
                print(f"skipping {size:,}: not enough disk", flush=True)
                break
        elif size == sizes[-1]:
            need = DEFAULT_BYTES_PER_RECORD * size
            free = asyncio.run(free_bytes())
            if need > free:
                print(f"skipping {size:,}: ~{need / 2**30:.0f} GiB needed, {free / 2**30:.0f} GiB free (df)")
                break
        print(f"size {size:,}", flush=True)
        results.append(measure(size, args, people))
        print_table(f"growth so far ({', '.join(f'{r.size:,}' for r in results)})", table(results))
    print_table(
        f"growth: {', '.join(f'{r.size:,}' for r in results)} records of history; {args.live_records:,} live records, "
        f"authorize at {args.authorize_rate:.0f}/s for {args.authorize_seconds:.0f} s",
        table(results),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
