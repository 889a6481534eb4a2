"""Webhook delivery: throughput (events/s) and latency of the deliver-webhooks job to a local receiver,
against a baseline measured in the same run, the same receiver hit directly by a plain httpx loop.

The receiver runs in a process of its own (so it takes no CPU from the measured loop): an HTTP
server that answers 204 and notes when each request arrived. The baseline POSTs signed bodies
of the same size with as many requests in flight as the deliverer sends to one endpoint. The deliverer
sends events already written to the outbox (writing them is not measured), on a throwaway
SQLite database, or PostgreSQL with --pg. Latency is one event at a time, from the commit of
the event to its arrival at the receiver, against one POST of the baseline.

    python bench/webhooks.py [--events 2000] [--latency-samples 30] [--pg] [--quick]

Printed: events/s of each path and their ratio; median and p95 latency of each path in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import Row, pg_database, postgres_reachable, print_table

from jobs import deliver_webhooks
from metering.config import Settings, set_settings
from metering.db import Database
from metering.events.service import NewEvent, event_service
from metering.migrate import upgrade
from metering.webhooks.delivery import delivery_service
from metering.webhooks.signing import signed_headers

SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()
EMIT_BATCH = 1_000


def _serve(port_out: multiprocessing.connection.Connection) -> None:
    """The receiver process: 204 to every POST; GET /arrivals answers {webhook-id: arrival time}."""
    arrivals: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            arrivals[self.headers.get("webhook-id", "")] = time.time()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            body = json.dumps(arrivals).encode()
            arrivals.clear()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # the default backlog of 5 resets a burst of connections

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_out.send(server.server_address[1])
    server.serve_forever()


def _event(index: int) -> NewEvent:
    account = f"org-{index % 50:02d}"
    key = f"credits.threshold:{account}:2026-12:{index}"
    data = {"percent": 50, "credits_granted_nano_usd": 2_000_000_000, "credits_used_nano_usd": 1_000_000_000}
    return NewEvent("credits.threshold", account, "2026-12", key, data)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def baseline(url: str, events: int, concurrency: int, samples: int) -> tuple[float, list[float]]:
    """Events/s of a plain httpx loop with ``concurrency`` requests in flight, and ``samples`` single-POST latencies."""
    body = (
        b'{"type":"credits.threshold","timestamp":"2026-12-07T09:00:00Z","data":{"account":"org-01",'
        b'"period":"2026-12","percent":50,"credits_granted_nano_usd":2000000000,"credits_used_nano_usd":1000000000}}'
    )
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(events):
        queue.put_nowait(index)
    # Connections kept as the deliverer keeps them: one per request in flight.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=10, limits=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                headers = signed_headers(secret=SECRET, webhook_id=f"base-{index}", at=datetime.now(UTC), body=body)
                response = await http.post(url, content=body, headers=headers)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = events / (time.perf_counter() - started)
        latencies = []
        for index in range(samples):
            headers = signed_headers(secret=SECRET, webhook_id=f"one-{index}", at=datetime.now(UTC), body=body)
            started = time.perf_counter()
            (await http.post(url, content=body, headers=headers)).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return rate, latencies


async def arrivals(base: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{base}/arrivals")).json()


async def metering(database: Database, base: str, events: int, samples: int) -> tuple[float, list[float]]:
    """Events/s of deliver-webhooks over ``events`` events, and ``samples`` one-event latencies (commit → arrival)."""
    for start in range(0, events, EMIT_BATCH):
        async with database.session_scope() as session:
            await event_service.emit(session, [_event(i) for i in range(start, min(events, start + EMIT_BATCH))])
    await arrivals(base)
    started = time.perf_counter()
    summary = await deliver_webhooks.run_once(database)
    rate = events / (time.perf_counter() - started)
    received = len(await arrivals(base))
    if received != events or f"delivered={events}" not in summary:
        raise SystemExit(f"deliverer sent {received} of {events}: {summary}")
    latencies = []
    for index in range(samples):
        async with database.session_scope() as session:
            await event_service.emit(session, [_event(events + index)])
        committed = time.time()
        await deliver_webhooks.run_once(database)
        arrived = list((await arrivals(base)).values())
        latencies.append((arrived[0] - committed) * 1000)
    return rate, latencies


async def run(database_url: str, data_dir: Path, base: str, events: int, samples: int) -> list[Row]:
    settings = Settings(
        environment="embedded",
        database_url=database_url,
        data_dir=data_dir,
        webhook_url=f"{base}/hooks",
        webhook_secret=SECRET,
    )
    set_settings(settings)
    await upgrade(database_url)
    database = Database(database_url)
    try:
        # One endpoint: the deliverer keeps at most its per-target share of slots in flight to it.
        in_flight = delivery_service.per_target(settings)
        base_rate, base_latency = await baseline(f"{base}/hooks", events, in_flight, samples)
        await arrivals(base)
        rate, latency = await metering(database, base, events, samples)
    finally:
        await database.dispose()
    return [
        Row("baseline: httpx loop", base_rate, "events/s", note=f"{in_flight} in flight"),
        Row("deliver-webhooks", rate, "events/s", note=f"{events} events, {in_flight} in flight to one endpoint"),
        Row("deliverer / baseline", rate / base_rate, "ratio"),
        Row("baseline latency p50", statistics.median(base_latency), "ms", note="one POST"),
        Row("baseline latency p95", _percentile(base_latency, 0.95), "ms"),
        Row("deliverer latency p50", statistics.median(latency), "ms", note="commit → arrival, one pass"),
        Row("deliverer latency p95", _percentile(latency, 0.95), "ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--latency-samples", type=int, default=30)
    parser.add_argument("--pg", action="store_true", help="on PostgreSQL (127.0.0.1:5432) instead of SQLite")
    parser.add_argument("--quick", action="store_true", help="200 events, 10 latency samples")
    args = parser.parse_args()
    events, samples = (200, 10) if args.quick else (args.events, args.latency_samples)
    parent, child = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
    receiver.start()
    base = f"http://127.0.0.1:{parent.recv()}"
    try:
        with ExitStack() as stack:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="metering-bench-webhooks-")))
            if args.pg:
                if not postgres_reachable():
                    raise SystemExit("PostgreSQL is not reachable on 127.0.0.1:5432")
                _, database_url = stack.enter_context(pg_database("metering_bench_webhooks"))
                engine = "PostgreSQL"
            else:
                database_url = f"sqlite+aiosqlite:///{data_dir}/metering.db"
                engine = "SQLite"
            rows = asyncio.run(run(database_url, data_dir, base, events, samples))
        print_table(f"Webhook delivery to a local receiver ({engine})", rows)
    finally:
        receiver.terminate()


if __name__ == "__main__":
    main()
