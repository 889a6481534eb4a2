"""The reference router's streaming overhead per chunk: a stream through the router against the same
stream taken straight from the provider simulator, in one run.

One process, one event loop, everything on loopback: the simulator (no latency, no faults),
Metering on a throwaway SQLite file, and the reference router in front of them. Each stream is
read to its end by an httpx client. A stream of n chunks costs a fixed part (connection,
authorize, the usage record) plus n times a per-chunk part, so each path is timed at two lengths
and the per-chunk cost is the slope between them; the fixed parts cancel out. The same run gives
the baseline (simulator → client) and the routed figure (simulator → router → client), with
their runs interleaved so that a busy moment of the machine falls on both.

    python bench/streaming.py [--quick] [--short 100] [--long 2000] [--repeat 15]

Printed: µs per chunk of each path, the router's overhead per chunk and the ratio of the two
slopes, and the fixed per-stream overhead (authorize and the record) in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import Row, print_table

from api.app import create_app
from demo.platform import Platform
from demo.router import RouterConfig, create_router_app
from demo.run import demo_settings
from demo.servers import LoopbackServer
from metering.config import set_settings
from metering.db import Database
from metering.migrate import upgrade
from simulator.app import create_simulator_app
from simulator.state import SimulatorState

MODEL = "org/bench-model"
USER_TOKEN = "hf_bench_user"


async def _read_stream(http: httpx.AsyncClient, url: str, chunks: int, headers: dict[str, str]) -> tuple[float, int]:
    """Seconds from sending the request to the stream's last byte, and the events received."""
    body = {
        "model": f"{MODEL}:sim",
        "messages": [{"role": "user", "content": "count"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": chunks,
    }
    events = 0
    started = time.perf_counter()
    async with http.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code} {(await response.aread())[:300]!r}")
        async for raw in response.aiter_raw():
            events += raw.count(b"data: ")
    return time.perf_counter() - started, events


async def measure(short: int, long: int, repeat: int) -> dict[tuple[str, int], float]:
    """Median seconds per stream of each (path, length)."""
    with tempfile.TemporaryDirectory(prefix="metering-bench-stream-") as directory:
        settings = demo_settings(Path(directory))
        set_settings(settings)
        await upgrade(settings.database_url)
        async with AsyncExitStack() as stack:
            database = Database(settings.database_url)
            stack.push_async_callback(database.dispose)
            state = SimulatorState(seed=1, token="sim-cost-token", models=(MODEL,))
            simulator = LoopbackServer("sim", create_simulator_app(state), lifespan="off")
            metering = LoopbackServer("metering", create_app(settings, database=database))
            for server in (simulator, metering):
                await server.start()
                stack.push_async_callback(server.stop)
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=120))
            platform = Platform(
                http,
                metering_url=metering.url,
                service_token=settings.service_token_list[0],
                jwt_secret=settings.jwt_secret,
            )
            await platform.put_provider(
                "sim",
                {
                    "url": simulator.url,
                    "pricing": "cost_endpoint",
                    "cost_endpoint": f"{simulator.url}/billing/costs",
                    "cost_token": "sim-cost-token",
                    "default_estimate_nano_usd": 1_000,
                },
            )
            await platform.put_account("bench-user", kind="user", plan="pro")
            router_app = create_router_app(
                RouterConfig(
                    metering_url=metering.url,
                    service_token=settings.service_token_list[0],
                    provider_urls={"sim": simulator.url},
                    provider_keys={"sim": "platform-key"},
                    users={USER_TOKEN: "bench-user"},
                    spool_path=Path(directory) / "router" / "spool.db",
                )
            )
            router = LoopbackServer("router", router_app)
            await router.start()
            stack.push_async_callback(router.stop)

            paths = {
                "direct": (f"{simulator.url}/v1/chat/completions", {"Authorization": "Bearer platform-key"}),
                "routed": (f"{router.url}/v1/chat/completions", {"Authorization": f"Bearer {USER_TOKEN}"}),
            }
            events: dict[tuple[str, int], int] = {}
            for name, (url, headers) in paths.items():  # warm-up: connections, caches, the first authorize
                for length in (short, long):
                    _, events[(name, length)] = await _read_stream(http, url, length, headers)
            if events[("direct", long)] != events[("routed", long)]:
                raise SystemExit(f"the router relayed {events[('routed', long)]} events of {events[('direct', long)]}")
            samples: dict[tuple[str, int], list[float]] = {key: [] for key in events}
            for round_ in range(repeat):
                order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
                for name in order:
                    for length in (short, long):
                        seconds, _ = await _read_stream(http, paths[name][0], length, paths[name][1])
                        samples[(name, length)].append(seconds)
            if not await router_app.state.sender.flush(timeout=60):
                raise SystemExit("the router's usage records did not reach Metering")
            return {key: statistics.median(values) for key, values in samples.items()}


def rows(medians: dict[tuple[str, int], float], short: int, long: int) -> list[Row]:
    per_chunk = {
        name: (medians[(name, long)] - medians[(name, short)]) / (long - short) * 1e6 for name in ("direct", "routed")
    }
    overhead = per_chunk["routed"] - per_chunk["direct"]
    fixed_ms = (medians[("routed", short)] - medians[("direct", short)]) * 1e3 - overhead * short / 1e3
    return [
        Row("per chunk, straight from the simulator", per_chunk["direct"], "µs", note="baseline"),
        Row("per chunk, through the router", per_chunk["routed"], "µs"),
        Row("router overhead per chunk", overhead, "µs"),
        Row("routed / direct per chunk", per_chunk["routed"] / per_chunk["direct"], "ratio"),
        Row("router overhead per stream (fixed part)", fixed_ms, "ms", note="authorize, connect, usage record"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500-chunk long streams, 5 rounds")
    parser.add_argument("--short", type=int, default=100, help="chunks of content in the short stream")
    parser.add_argument("--long", type=int, default=2000, help="chunks of content in the long stream")
    parser.add_argument("--repeat", type=int, default=15, help="rounds; each times every path and length once")
    args = parser.parse_args(argv)
    long, repeat = (500, 5) if args.quick else (args.long, args.repeat)
    if not 0 < args.short < long:
        parser.error("--short must be positive and less than --long")
    medians = asyncio.run(measure(args.short, long, repeat))
    print_table(
        f"streaming through the reference router: {args.short} and {long} chunks per stream, median of {repeat} rounds",
        rows(medians, args.short, long),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
