"""Orchestration of ``metering demo``: start everything on loopback, play the month, report, serve.

One process, one event loop: three simulated providers, the Metering API (``create_app``
under uvicorn), the reference router, and the scheduler's jobs driven with ``run_job``.
The embedded SQLite database and the router's spool live in a data folder that is wiped
at every start, so reruns begin from nothing; by default it is the folder every other
command reads (``METERING_DATA_DIR``, else ``.metering``), so ``metering verify``,
``export`` and ``serve`` show the demo's month afterwards.

The bill depends only on the seed: see ``Traffic`` (one request at a time, in a fixed
order), ``SimulatedProvider`` (IDs and costs from the seed), ``TRAFFIC_DAYS`` (the same
days of traffic whichever month is played), and ``_run`` (records delivered at fixed points,
one engine whose estimate cache sees every new mean at once).
"""

from __future__ import annotations

import asyncio
import random
import shlex
import shutil
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console

from api.app import create_app
from demo import DEFAULT_SEED
from demo.month import Month, SimulatedClock
from demo.platform import Platform, sign_token
from demo.providers import PROVIDERS, FaultPlan, SimulatedProvider
from demo.report import gather_summary, print_next_steps, print_summary, print_urls, write_json
from demo.router import RouterConfig, create_router_app
from demo.scenario import ACCOUNTS, CUSTOM_KEYS, MEMBERS, Traffic, user_token
from demo.servers import LoopbackServer
from jobs.scheduler import build_scheduler
from metering.config import EMBEDDED_DEV_TOKEN, Settings, set_settings
from metering.db import Database
from metering.migrate import upgrade
from metering.periods import period_bounds, period_of, previous_period, set_clock_offset

MARKER = ".metering-demo"
# Kept when the folder is wiped: made by any command on first use, it holds no billing data, and
# tokens from ``metering token`` stay valid across demo runs.
SECRETS_FILE = "secrets.env"


class NotADemoFolder(Exception):
    """The data folder holds files the demo did not make; it is never wiped."""


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path
    serve: bool = True
    json_summary: Path | None = None
    seed: int = DEFAULT_SEED


def prepare_data_dir(path: Path) -> None:
    """Empty the data folder but for its secrets; refuse one with data the demo did not make (no marker file)."""
    if path.exists():
        others = [child.name for child in path.iterdir() if child.name not in (MARKER, SECRETS_FILE)]
        if others and not (path / MARKER).exists():
            if "metering.db" in others:  # most likely `metering serve` ran here first, on the same default folder
                raise NotADemoFolder(
                    f"{path} is not empty and not a demo data folder: its metering.db was not made by the demo "
                    "(by `metering serve`?) and the demo wipes its folder; move that away or choose another --data-dir"
                )
            raise NotADemoFolder(f"{path} is not empty and not a demo data folder; choose another --data-dir")
        for child in path.iterdir():
            if child.name == SECRETS_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `metering demo`; wiped at its every start\n")


def pointing_lines(settings: Settings) -> list[str]:
    """Shell lines after which the other commands read the demo's database; none when they already do.

    The other commands take their settings from the environment: a data folder other than the
    demo's, a database URL or the production environment would send them elsewhere.
    """
    from pydantic_settings import EnvSettingsSource

    configured = EnvSettingsSource(Settings)()
    lines = []
    unset = [
        f"METERING_{name.upper()}"
        for name, default in (("environment", "embedded"), ("database_url", ""))
        if configured.get(name, default) not in (default, getattr(settings, name))
    ]
    if unset:
        lines.append(f"unset {' '.join(unset)}")
    data_dir = Path(configured.get("data_dir") or Settings.model_fields["data_dir"].default)
    if data_dir.resolve() != settings.data_dir.resolve():
        lines.append(f"export METERING_DATA_DIR={shlex.quote(str(settings.data_dir.resolve()))}")
    return lines


def demo_settings(data_dir: Path) -> Settings:
    """The embedded default in ``data_dir``, whatever the environment says: SQLite, generated secrets, no Stripe."""
    no_stripe = {"STRIPE_API_KEY": "", "STRIPE_API_BASE": "", "STRIPE_WEBHOOK_SECRET": ""}  # set by alias only
    database_url = f"sqlite+aiosqlite:///{(data_dir / 'metering.db').as_posix()}"
    return Settings(
        environment="embedded",
        data_dir=data_dir,
        database_url=database_url,
        service_tokens=EMBEDDED_DEV_TOKEN,
        secret_key="",
        jwt_secret="",
        jwt_public_key="",
        **no_stripe,
    )


def demo_period(now: datetime, grace_hours: int) -> str:
    """The latest month already past its grace window, so the simulated clock never passes the real one."""
    period = previous_period(period_of(now))
    while period_bounds(period)[1] + timedelta(hours=grace_hours + 1) > now:
        period = previous_period(period)
    return period


async def sync_platform(platform: Platform, providers: dict[str, SimulatedProvider]) -> None:
    """What the hub's platform would have told Metering before the month: providers, accounts, settings."""
    for provider_id, provider in providers.items():
        await platform.put_provider(provider_id, provider.registration())
    for user in MEMBERS:
        await platform.put_account(user, kind="user", plan="free")
    for account in ACCOUNTS:
        await platform.put_account(account.name, kind=account.kind, plan=account.plan, seats=account.seats)
        for user, role in account.members:
            await platform.put_member(account.name, user, role)
        if account.spending_limit_nano_usd is not None:
            await platform.set_spending_limit(account.name, account.spending_limit_nano_usd, as_user=account.admin)
        if account.disabled_providers:
            await platform.set_disabled_providers(account.name, list(account.disabled_providers), as_user=account.admin)


def router_config(settings: Settings, metering_url: str, providers: dict[str, SimulatedProvider]) -> RouterConfig:
    users = [account.name for account in ACCOUNTS if account.kind == "user"] + MEMBERS
    return RouterConfig(
        metering_url=metering_url,
        service_token=settings.service_token_list[0],
        provider_urls={pid: provider.url for pid, provider in providers.items()},
        provider_keys={pid: f"platform-key-for-{pid}" for pid in providers},
        users={user_token(user): user for user in users},
        spool_path=settings.data_dir / "router" / "usage-spool.db",
        custom_keys=CUSTOM_KEYS,
        background_delivery=False,  # the month flushes the spool after each day's traffic
    )


async def run_demo(options: DemoOptions, console: Console) -> dict:
    """Play the month and report it; with ``serve``, keep everything running until SIGINT/SIGTERM."""
    prepare_data_dir(options.data_dir)
    settings = demo_settings(options.data_dir)
    set_settings(settings)
    # The back-off jitter of cost collection and of the hook's sender draws from ``random``.
    random.seed(options.seed)
    clock = SimulatedClock(demo_period(datetime.now(UTC), settings.period_grace_hours))
    clock.set(clock.at(1))
    try:
        return await _run(options, settings, clock, console)
    finally:
        set_clock_offset(timedelta(0))


async def _run(options: DemoOptions, settings: Settings, clock: SimulatedClock, console: Console) -> dict:
    providers = {spec.id: SimulatedProvider(spec, options.seed) for spec in PROVIDERS}
    started = time.perf_counter()
    await upgrade(settings.database_url)
    async with AsyncExitStack() as stack:
        # One engine for the API and the jobs: the API keeps estimates in a cache per engine for a
        # few seconds of wall time, and the new mean a collect-costs pass writes must reach the next
        # day's authorizations whatever the wall clock says.
        database = Database(settings.database_url)
        stack.push_async_callback(database.dispose)
        metering = LoopbackServer("metering", create_app(settings, database=database))
        for server in (*(p.server for p in providers.values()), metering):
            await server.start()
            stack.push_async_callback(server.stop)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=60.0))
        platform = Platform(
            http,
            metering_url=metering.url,
            service_token=settings.service_token_list[0],
            jwt_secret=settings.jwt_secret,
        )
        await sync_platform(platform, providers)
        router_app = create_router_app(router_config(settings, metering.url, providers))
        router = LoopbackServer("router", router_app)
        await router.start()
        stack.push_async_callback(router.stop)
        console.print(
            f"[bold]Metering demo[/bold]: playing {clock.period} with seed {options.seed} on "
            f"{settings.database_url} (Metering {metering.url}, router {router.url})",
            highlight=False,
        )

        traffic = Traffic(http, router.url)
        month = Month(
            clock=clock,
            database=database,
            traffic=traffic,
            faults=FaultPlan(providers),
            sender=router_app.state.sender,
            http=http,
            console=console,
            grace_hours=settings.period_grace_hours,
        )
        closed = await month.play()
        summary = await gather_summary(platform, period=clock.period, log=traffic.log, close_period=closed)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        print_summary(console, summary)
        console.print(f"played {clock.period} in {summary['seconds']:.1f} s", highlight=False)
        if options.json_summary is not None:
            write_json(options.json_summary, summary)
        print_next_steps(console, period=clock.period, env_lines=pointing_lines(settings), example_user="alice")
        if options.serve:
            # Back to the wall clock (a forward jump: the month played is past its grace window).
            set_clock_offset(timedelta(0))
            router_app.state.sender.start()  # requests sent from now on are recorded as they come
            pages = {
                account.name: f"{metering.url}/billing/{account.name}?period={clock.period}"
                f"&token={sign_token(settings.jwt_secret, account.admin)}"
                for account in ACCOUNTS
            }
            print_urls(
                console,
                metering_url=metering.url,
                router_url=router.url,
                pages=pages,
                example_user="ivan",
                example_org="initech",
            )
            await serve_until_interrupted(database)
    return summary


async def serve_until_interrupted(database: Database) -> None:
    """Run the scheduler on its wall-clock triggers next to the servers until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scheduler = build_scheduler(database)
    scheduler.start()
    try:
        await stop.wait()
    finally:
        scheduler.shutdown(wait=False)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
