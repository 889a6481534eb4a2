"""Authorize on the hot path (PostgreSQL): month start, warm latency, saturation, two workers, limit overshoot.

A real ``metering serve`` (uvicorn subprocess) over pro users, a fifth of the warm requests
billed to one of 10 team orgs. In one run:

1. month start, granted ahead: the grant-credits job runs as the scheduler runs it in the
   last hours of the previous month (the bench's own clock is moved there for the job), then
   an open loop of first-of-period calls at ``--month-rate``, each from a different account;
2. month start, not granted: the same for accounts created after that job ran (no period
   row yet: the first call grants the period's credits itself);
3. warm open loop at ``--rate`` over accounts that have decided before;
4. saturation: closed loop, 64 in flight, on authorize and on ``GET /healthz`` (a route
   returning a constant, same server) → requests/s of each and their ratio;
5. the database alone: the one-statement decision run straight on asyncpg connections, closed
   loop, so its statements/s and latency show what the server adds and what the machine allows;
6. limit overshoot: 64 concurrent authorizations against an org whose limit fits exactly 10
   estimates, then each allowed request's usage is posted with its hold and its cost
   collected from the provider simulator at 1.5 × the estimate → charged − limit;
7. all of it again but the database alone on ``metering serve --workers 2`` (new accounts for
   its month start).

Open-loop latency is measured from each request's scheduled send time, so a stalled server
cannot hide its queue (no coordinated omission) → p50 / p99 / max and errors. During each
open loop the database's active backends are sampled (``pg_stat_activity``: what they wait
on), and ``/proc`` gives the CPU used per request by the server's processes and by the
database's backends, and the cores every other process of the machine took meanwhile (the
machine may be shared with other runs).

    python bench/authorize.py [--quick] [--rate 1000] [--month-rate 500] [--duration 30]

Targets (ratios of one run): month start at 500 calls/s p99 <= 50 ms with no errors; warm
p99 <= 5 ms at 1,000 req/s; saturation >= 0.5 of the trivial route's; 2 workers >= 1.5 × one
worker's saturation; exactly 10 of the 64 allowed and overshoot = allowed × (actual − estimate),
i.e. bounded by estimate error. The load generator shares the machine with the server and
PostgreSQL, so its own scheduling lag counts in the latency (which errs against the server,
never for it); its cyclic collector is paused while it measures, so its own collection pauses do not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import asyncpg
import httpx
import orjson
from _common import Row, asyncpg_dsn, pg_database, postgres_reachable, print_table, serve
from sqlalchemy import insert

from metering.config import Settings, set_settings
from metering.db import Database
from metering.hot_path.pg_decision import pg_decision_repository
from metering.models import Account, AccountPeriod, Membership
from metering.periods import current_period, period_bounds, set_clock_offset
from tests.support.servers import free_port, wait_until_up

MONTH_START_P99_TARGET_MS = 50.0
P99_TARGET_MS = 5.0
SATURATION_RATIO_TARGET = 0.5
WORKERS_RATIO_TARGET = 1.5
ORGS = 10
ESTIMATE = 100_000
OVERSHOOT_ESTIMATE = 1_000_000
OVERSHOOT_FACTOR_NUM, OVERSHOOT_FACTOR_DEN = 3, 2  # actual cost = 1.5 × estimate
PROVIDERS = {
    "together": {"default_estimate_nano_usd": ESTIMATE},
    "fireworks-ai": {"default_estimate_nano_usd": 120_000},
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- a minimal HTTP/1.1 keep-alive client: the load generator must cost far less CPU than the server ---


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head + body)
        status_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        return status, await self.reader.readexactly(length)


class Pool:
    """``size`` persistent connections; a request waits for a free one (that wait counts as latency)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.free: asyncio.Queue[Connection] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self.free.put_nowait(Connection(*await asyncio.open_connection(self.host, self.port)))

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        connection = await self.free.get()
        try:
            return await connection.request(head, body)
        finally:
            self.free.put_nowait(connection)

    async def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait().writer.close()


def post_head(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {_common.SERVICE_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


def body_of(user: str, bill_to: str | None = None) -> bytes:
    return orjson.dumps({"user": user, "bill_to": bill_to, "provider": "together fireworks-ai", "model": "org/m"})


def warm_bodies(users: list[str], count: int, org_share: float, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        index = rng.randrange(len(users))
        bill_to = f"org-{index % ORGS:02d}" if rng.random() < org_share else None
        bodies.append(body_of(users[index], bill_to))
    return bodies


# --- setup ---


def settings_for(url: str, data_dir: str) -> Settings:
    return Settings(
        environment="embedded",
        database_url=url,
        data_dir=Path(data_dir),
        service_tokens=_common.SERVICE_TOKEN,
        secret_key=base64.urlsafe_b64encode(b"b" * 32).decode(),  # the key _common.serve gives the server
        jwt_secret="bench-jwt-secret-long-enough-for-hs256",
    )


def user_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


async def seed_accounts(url: str, users: list[str], *, orgs: bool) -> None:
    database = Database(url)
    now = datetime.now(UTC)
    row = {"kind": "user", "plan": "pro", "seats": 1, "status": "active", "created_at": now, "updated_at": now}
    try:
        async with database.session_scope() as session:
            await session.execute(insert(Account), [{"name": name, **row} for name in users])
            if orgs:
                await session.execute(
                    insert(Account),
                    [{**row, "name": f"org-{i:02d}", "kind": "org", "plan": "team", "seats": 10} for i in range(ORGS)],
                )
            await session.execute(
                insert(Membership),
                [
                    {"org_name": f"org-{i % ORGS:02d}", "user_name": name, "role": "write", "created_at": now}
                    for i, name in enumerate(users)
                ],
            )
    finally:
        await database.dispose()


async def grant_credits_before_the_period(url: str) -> str:
    """The grant-credits job as the scheduler runs it an hour before the current period began."""
    from jobs import grant_credits

    start, _ = period_bounds(current_period())
    set_clock_offset(start - timedelta(hours=1) - datetime.now(UTC))
    database = Database(url)
    try:
        return await grant_credits.run_once(database)
    finally:
        set_clock_offset(timedelta(0))
        await database.dispose()


def register(client: httpx.Client, provider_id: str, *, cost_endpoint: str, **extra: object) -> None:
    body = {
        "url": "http://127.0.0.1:9",
        "pricing": "cost_endpoint",
        "cost_endpoint": cost_endpoint,
        "cost_token": "provider-token",
        **extra,
    }
    client.put(f"/internal/v1/providers/{provider_id}", json=body).raise_for_status()


# --- what the processes do meanwhile: the database's waits, everyone's CPU ---


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


@dataclass
class Observation:
    """The database's active backends by what they wait on; CPU seconds of the server, the database, this
    load generator and every other process of the machine (other runs sharing it), and the phase's length."""

    waits: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    server_cpu: float = 0.0
    database_cpu: float = 0.0
    generator_cpu: float = 0.0
    others_cpu: float = 0.0
    seconds: float = 0.0

    def others_cores(self) -> float:
        return self.others_cpu / self.seconds if self.seconds else 0.0

    def top_waits(self, count: int = 4) -> str:
        if not self.samples:
            return "none sampled"
        return ", ".join(f"{what} {n / self.samples:.2f}" for what, n in self.waits.most_common(count)) or "idle"


class Observer:
    """Samples ``pg_stat_activity`` of the bench database every ``interval`` seconds while a phase runs."""

    def __init__(self, dsn: str, database: str, server_pids: set[int], interval: float = 0.02) -> None:
        self.dsn, self.database, self.server_pids, self.interval = dsn, database, server_pids, interval

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Observation]:
        observation = Observation()
        connection = await asyncpg.connect(self.dsn)
        backends = await self._backends(connection)
        server_before = sum(_cpu_seconds(pid) for pid in self.server_pids)
        machine_before, generator_before, began = _machine_busy_seconds(), time.process_time(), time.monotonic()
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                rows = await connection.fetch(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'running') AS what, pid FROM pg_stat_activity"
                    " WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
                    self.database,
                )
                observation.samples += 1
                for row in rows:
                    observation.waits[row["what"]] += 1
                    backends.setdefault(row["pid"], _cpu_seconds(row["pid"]))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

        task = asyncio.create_task(sample())
        try:
            yield observation
        finally:
            stop.set()
            await task
            for pid in await self._backends(connection):
                backends.setdefault(pid, 0.0)
            observation.database_cpu = sum(_cpu_seconds(pid) - before for pid, before in backends.items())
            observation.server_cpu = sum(_cpu_seconds(pid) for pid in self.server_pids) - server_before
            observation.generator_cpu = time.process_time() - generator_before
            observation.seconds = time.monotonic() - began
            observation.others_cpu = max(
                0.0,
                _machine_busy_seconds()
                - machine_before
                - observation.database_cpu
                - observation.server_cpu
                - observation.generator_cpu,
            )
            await connection.close()

    async def _backends(self, connection: asyncpg.Connection) -> dict[int, float]:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.database
        )
        return {row["pid"]: _cpu_seconds(row["pid"]) for row in rows}


# --- the measurements ---


@contextlib.contextmanager
def generator_collector_paused() -> Iterator[None]:
    """No cyclic collection in the load generator while it measures.

    The generator holds tens of thousands of bodies and creates a task per request; its own
    full collections paused its event loop for up to ~100 ms, and every request in flight
    then showed the pause as server latency. The server's collector is left as it is.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@dataclass
class Loop:
    """An open loop's outcome."""

    p50: float
    p99: float
    max: float
    offered_rate: float
    completed_rate: float
    statuses: dict[int, int]
    allowed: int
    count: int
    observation: Observation

    @property
    def errors(self) -> int:
        return self.count - self.statuses.get(200, 0)

    def per_request_ms(self, seconds: float) -> float:
        return seconds / self.count * 1000


async def open_loop(port: int, bodies: list[bytes], rate: float, connections: int, observer: Observer | None) -> Loop:
    pool = Pool("127.0.0.1", port, connections)
    await pool.open()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    allowed = 0

    async def one(scheduled: float, body: bytes) -> None:
        nonlocal allowed
        try:
            status, answer = await pool.request(post_head("/internal/v1/authorize", body), body)
        except (OSError, asyncio.IncompleteReadError):
            status, answer = 0, b""
        latencies.append(loop.time() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1
        allowed += answer.startswith(b'{"allowed":true')

    async with observer.watching() if observer else contextlib.nullcontext(Observation()) as observation:
        start = loop.time() + 0.05
        last_scheduled = start + (len(bodies) - 1) / rate
        tasks = []
        for index, body in enumerate(bodies):
            scheduled = start + index / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled, body)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    await pool.close()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return Loop(
        p50=pick(0.50),
        p99=pick(0.99),
        max=latencies[-1] * 1000,
        offered_rate=len(bodies) / max(last_scheduled - start, 1e-9),
        completed_rate=len(bodies) / elapsed,
        statuses=statuses,
        allowed=allowed,
        count=len(bodies),
        observation=observation,
    )


async def saturate(port: int, make: list[tuple[bytes, bytes]], seconds: float, concurrency: int = 64) -> float:
    pool = Pool("127.0.0.1", port, concurrency)
    await pool.open()
    done = 0
    failures = 0
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done, failures
        index = offset
        while time.perf_counter() < stop:
            head, body = make[index % len(make)]
            status, _ = await pool.request(head, body)
            failures += status != 200
            done += 1
            index += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    await pool.close()
    if failures:
        raise RuntimeError(f"{failures} non-200 answers under saturation")
    return done / elapsed


@dataclass
class Alone:
    """The one-statement decision straight on the database: no HTTP, no server."""

    rate: float
    p50: float
    p99: float


async def database_alone(url: str, users: list[str], seconds: float, connections: int = 8) -> Alone:
    """Closed loop of the decision statement on ``connections`` asyncpg connections, as the server runs it."""
    from metering.authorize.service import AuthorizeRequest, statement_arguments

    drivers = [
        await asyncpg.connect(asyncpg_dsn(url), server_settings={"plan_cache_mode": "force_generic_plan"})
        for _ in range(connections)
    ]
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def run(driver: asyncpg.Connection, offset: int) -> None:
        index = offset
        while time.perf_counter() < stop:
            request = AuthorizeRequest(user=users[index % len(users)], bill_to=None, provider="together", model="org/m")
            arguments = statement_arguments(request, datetime.now(UTC))
            began = time.perf_counter()
            await pg_decision_repository.decide_on(driver, **arguments)
            latencies.append(time.perf_counter() - began)
            index += connections

    started = time.perf_counter()
    await asyncio.gather(*(run(driver, i) for i, driver in enumerate(drivers)))
    elapsed = time.perf_counter() - started
    for driver in drivers:
        await driver.close()
    latencies.sort()
    return Alone(
        rate=len(latencies) / elapsed,
        p50=latencies[len(latencies) // 2] * 1000,
        p99=latencies[int(0.99 * len(latencies))] * 1000,
    )


async def overshoot(base_url: str, sim_url: str, url: str, org: str) -> dict:
    """64 concurrent authorizations on a limit of 10 estimates, then actual costs of 1.5 × estimate."""
    database = Database(url)
    try:
        return await _overshoot(base_url, sim_url, database, org)
    finally:
        await database.dispose()


async def _overshoot(base_url: str, sim_url: str, database: Database, org: str) -> dict:
    from jobs import collect_costs
    from metering.limits.service import limits_service

    limit = 10 * OVERSHOOT_ESTIMATE
    user = f"{org}-user"
    headers = {"Authorization": f"Bearer {_common.SERVICE_TOKEN}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        (
            await client.put(f"/internal/v1/accounts/{org}", json={"kind": "org", "plan": "team", "seats": 0})
        ).raise_for_status()
        (await client.put(f"/internal/v1/orgs/{org}/members/{user}", json={"role": "write"})).raise_for_status()
        async with database.session_scope() as session:
            await limits_service.set_spending_limit(session, account_name=org, limit_nano_usd=limit, actor="bench")
        # A model of its own: no earlier run's costs in its estimate, so the limit fits exactly 10.
        model = f"org/{org}"
        request = {"user": user, "bill_to": org, "provider": "sim", "model": model}
        answers = await asyncio.gather(*(client.post("/internal/v1/authorize", json=request) for _ in range(64)))
        allowed = [a.json() for a in answers if a.json()["allowed"]]
        actual = OVERSHOOT_ESTIMATE * OVERSHOOT_FACTOR_NUM // OVERSHOOT_FACTOR_DEN
        request_ids = {answer["hold_id"]: f"req-{uuid.uuid4()}" for answer in allowed}
        (
            await client.post(f"{sim_url}/_sim/costs", json={"costs": {rid: actual for rid in request_ids.values()}})
        ).raise_for_status()
        started = datetime.now(UTC).isoformat()
        records = [
            {
                "request_id": rid,
                "provider": "sim",
                "user": user,
                "bill_to": org,
                "model": model,
                "started_at": started,
                "hold_id": hold_id,
            }
            for hold_id, rid in request_ids.items()
        ]
        ingest = (await client.post("/internal/v1/usage", json={"records": records})).json()
    summary = await collect_costs.run_once(database)
    async with database.session_scope() as session:
        row = await session.get(AccountPeriod, (org, current_period()))
        charged = row.payg_nano_usd
        pending = row.pending_estimate_nano_usd + row.held_nano_usd
    return {
        "allowed": len(allowed),
        "limit": limit,
        "charged": charged,
        "overshoot": charged - limit,
        "in_flight_left": pending,
        "accepted": ingest.get("accepted"),
        "collect": summary.splitlines()[0],
    }


async def verify_clean(url: str) -> tuple[bool, int]:
    from metering.ledger.verify import verify

    database = Database(url)
    try:
        report = await verify(database)
    finally:
        await database.dispose()
    return report.ok, report.breach_count


# --- orchestration ---


MONTH_AHEAD, MONTH_LAZY, WARM = "month start, granted ahead", "month start, not granted", "warm"


@dataclass
class Results:
    # Open loops by (kind, workers): kind one of MONTH_AHEAD, MONTH_LAZY, WARM.
    loops: dict[tuple[str, int], Loop] = field(default_factory=dict)
    # Closed loops by workers: authorize's and the trivial route's requests/s.
    authorize_rate: dict[int, float] = field(default_factory=dict)
    trivial_rate: dict[int, float] = field(default_factory=dict)
    alone: Alone | None = None
    over: dict[int, dict] = field(default_factory=dict)
    verified: tuple[bool, int] = (False, -1)


def _describe(name: str, loop: Loop) -> None:
    o = loop.observation
    print(
        f"{name}: statuses {loop.statuses}, allowed {loop.allowed} of {loop.count}; "
        f"CPU per request: server {loop.per_request_ms(o.server_cpu):.2f} ms, database {loop.per_request_ms(o.database_cpu):.2f} ms; "
        f"meanwhile other processes of the machine used {o.others_cores():.2f} cores, the load generator "
        f"{o.generator_cpu / max(o.seconds, 1e-9):.2f}; "
        f"database backends active (mean per sample, by wait): {o.top_waits()}",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> list[Row]:
    if not postgres_reachable():
        return [Row("authorize p99", 0, "ms", f"<= {P99_TARGET_MS}", "skipped: PostgreSQL not reachable")]
    data_dir = tempfile.mkdtemp(prefix="metering-bench-authorize-")
    month_count = int(args.month_rate * args.month_seconds)
    # Per worker count: accounts granted ahead, accounts created after the grant job, accounts for the warm-up.
    ahead = {workers: user_names(f"ahead{workers}", month_count) for workers in (1, 2)}
    lazy = {workers: user_names(f"late{workers}", month_count) for workers in (1, 2)}
    warmup = {workers: user_names(f"warmup{workers}", 1_000) for workers in (1, 2)}
    results = Results()
    with pg_database() as (name, url):
        set_settings(settings_for(url, data_dir))
        asyncio.run(seed_accounts(url, ahead[1] + ahead[2], orgs=True))
        print(asyncio.run(grant_credits_before_the_period(url)), file=sys.stderr)
        # Created after the job: their first call of the period finds no period row.
        asyncio.run(seed_accounts(url, lazy[1] + lazy[2] + warmup[1] + warmup[2], orgs=False))
        sim_port = free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "simulate-provider", "--port", str(sim_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sim_url = f"http://127.0.0.1:{sim_port}"
        everyone = ahead[1] + lazy[1]
        count = int(args.rate * args.duration)
        warm = warm_bodies(everyone, count + 2_000, args.org_share)
        authorize_requests = [(post_head("/internal/v1/authorize", b), b) for b in warm[count:]]
        try:
            wait_until_up(f"{sim_url}/_sim/stats", process=sim)
            for workers in (1, 2):
                with serve(url, workers=workers) as base_url:
                    port = int(base_url.rsplit(":", 1)[1])
                    observer = Observer(asyncpg_dsn(url), name, _descendants(os.getpid()) - {sim.pid})
                    if workers == 1:
                        register_providers(base_url, sim_url)
                    # Warm up connections, caches and the server's code paths, first calls included.
                    warmup_bodies = [body_of(u) for u in warmup[workers]]
                    asyncio.run(open_loop(port, warmup_bodies, min(args.month_rate, 250), 32, None))
                    asyncio.run(open_loop(port, warm[count : count + 1_000], min(args.rate, 500), 32, None))
                    with generator_collector_paused():
                        for kind, users in ((MONTH_AHEAD, ahead[workers]), (MONTH_LAZY, lazy[workers])):
                            bodies = [body_of(u) for u in users]
                            results.loops[(kind, workers)] = asyncio.run(
                                open_loop(port, bodies, args.month_rate, 64, observer)
                            )
                        results.loops[(WARM, workers)] = asyncio.run(
                            open_loop(port, warm[:count], args.rate, args.connections, observer)
                        )
                        results.authorize_rate[workers] = asyncio.run(
                            saturate(port, authorize_requests, args.saturation_seconds)
                        )
                        results.trivial_rate[workers] = asyncio.run(
                            saturate(port, [(GET_HEALTHZ, b"")], args.saturation_seconds)
                        )
                        if workers == 1:
                            results.alone = asyncio.run(database_alone(url, everyone, args.saturation_seconds))
                    results.over[workers] = asyncio.run(overshoot(base_url, sim_url, url, f"capped-org-{workers}"))
            results.verified = asyncio.run(verify_clean(url))
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    return rows_of(results, args)


def register_providers(base_url: str, sim_url: str) -> None:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {_common.SERVICE_TOKEN}"}) as client:
        for provider_id, extra in PROVIDERS.items():
            register(client, provider_id, cost_endpoint="http://127.0.0.1:9/billing/costs", **extra)
        register(client, "sim", cost_endpoint=f"{sim_url}/billing/costs", default_estimate_nano_usd=OVERSHOOT_ESTIMATE)


def _cpu_rows(label: str, loop: Loop) -> list[Row]:
    o = loop.observation
    return [
        Row(f"{label}: server CPU", loop.per_request_ms(o.server_cpu), "ms/req", "", "its processes, from /proc"),
        Row(f"{label}: database CPU", loop.per_request_ms(o.database_cpu), "ms/req", "", "its backends, from /proc"),
        Row(f"{label}: other processes", o.others_cores(), "cores", "", f"of {os.cpu_count()}, other runs meanwhile"),
    ]


def _loop_rows(kind: str, workers: int, r: Results, args: argparse.Namespace) -> list[Row]:
    loop = r.loops[(kind, workers)]
    label = f"{kind}, {workers} worker{'s' if workers > 1 else ''}"
    _describe(label, loop)
    if kind == WARM:
        met = loop.p99 <= P99_TARGET_MS and loop.errors == 0
        head = [
            Row(f"{label}: completed rate", loop.completed_rate, "req/s", f"{args.rate:,.0f}", "open loop"),
            Row(f"{label}: p50", loop.p50, "ms"),
            Row(f"{label}: p99", loop.p99, "ms", f"<= {P99_TARGET_MS}", "met" if met else "MISSED"),
        ]
    else:
        met = loop.p99 <= MONTH_START_P99_TARGET_MS and loop.errors == 0
        head = [
            Row(f"{label}: p50", loop.p50, "ms", "", f"{args.month_rate:,.0f} first calls/s, each a new account"),
            Row(f"{label}: p99", loop.p99, "ms", f"<= {MONTH_START_P99_TARGET_MS:.0f}", "met" if met else "MISSED"),
            Row(f"{label}: p99 / warm p99", loop.p99 / r.loops[(WARM, workers)].p99, "ratio"),
        ]
    return [
        *head,
        Row(f"{label}: max", loop.max, "ms"),
        Row(f"{label}: errors", loop.errors, "requests", "0"),
        *_cpu_rows(label, loop),
    ]


def rows_of(r: Results, args: argparse.Namespace) -> list[Row]:
    assert r.alone is not None
    rows: list[Row] = []
    for workers in (1, 2):
        for kind in (MONTH_AHEAD, MONTH_LAZY, WARM):
            rows += _loop_rows(kind, workers, r, args)
    for workers in (1, 2):
        ratio = r.authorize_rate[workers] / r.trivial_rate[workers]
        rows += [
            Row(f"saturation authorize, {workers} worker(s)", r.authorize_rate[workers], "req/s", "", "64 in flight"),
            Row(f"saturation GET /healthz, {workers} worker(s)", r.trivial_rate[workers], "req/s", "", "same server"),
            Row(
                f"authorize / baseline, {workers} worker(s)",
                ratio,
                "ratio",
                f">= {SATURATION_RATIO_TARGET}",
                "met" if ratio >= SATURATION_RATIO_TARGET else "MISSED",
            ),
        ]
    scale = r.authorize_rate[2] / r.authorize_rate[1]
    rows += [
        Row(
            "authorize 2 workers / 1 worker",
            scale,
            "ratio",
            f">= {WORKERS_RATIO_TARGET}",
            "met" if scale >= WORKERS_RATIO_TARGET else "MISSED",
        ),
        Row("database alone: decisions/s", r.alone.rate, "stmt/s", "", "8 asyncpg connections, no server"),
        Row("database alone: p50", r.alone.p50, "ms"),
        Row("database alone: p99", r.alone.p99, "ms"),
        Row("authorize 1 worker / database alone", r.authorize_rate[1] / r.alone.rate, "ratio"),
    ]
    for workers, over in sorted(r.over.items()):
        print(f"overshoot run, {workers} worker(s): {over}", file=sys.stderr)
        rows += [
            Row(
                f"overshoot, {workers} worker(s): allowed of 64",
                over["allowed"],
                "requests",
                "10",
                "met" if over["allowed"] == 10 else "MISSED: the limit fits exactly 10 estimates",
            ),
            Row(
                f"overshoot, {workers} worker(s): charged - limit",
                over["overshoot"],
                "nano-USD",
                "<= 10 x 0.5 x est.",
                "met" if over["overshoot"] <= over["allowed"] * (OVERSHOOT_ESTIMATE // 2) else "MISSED",
            ),
        ]
    ok, breaches = r.verified
    rows.append(Row("metering verify after the run: breaches", breaches, "", "0", "clean" if ok else "BREACHED"))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s of load and 2 s of saturation: a fast check")
    parser.add_argument("--rate", type=float, default=1_000, help="warm open-loop requests per second (default 1,000)")
    parser.add_argument("--duration", type=float, default=30, help="warm open-loop seconds (default 30)")
    parser.add_argument("--month-rate", type=float, default=500, help="first-of-period calls per second (default 500)")
    parser.add_argument("--month-seconds", type=float, default=10, help="month-start open-loop seconds (default 10)")
    parser.add_argument(
        "--saturation-seconds", type=float, default=10, help="closed-loop seconds per route (default 10)"
    )
    parser.add_argument("--connections", type=int, default=128, help="open-loop keep-alive connections (default 128)")
    parser.add_argument("--org-share", type=float, default=0.2, help="share of requests billed to an org (default 0.2)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 5)
        args.month_seconds = min(args.month_seconds, 5)
        args.saturation_seconds = min(args.saturation_seconds, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print_table(
        f"authorize on PostgreSQL: month start at {args.month_rate:,.0f} first calls/s for {args.month_seconds:.0f} s, "
        f"warm {args.rate:,.0f} req/s for {args.duration:.0f} s open loop; 1 and 2 uvicorn workers",
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
