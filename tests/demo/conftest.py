"""Two worlds for the demo's tests: one ``metering demo --no-serve`` run per test session, shared by
every test that looks at its month; and, per test, the reference router in front of a real
Metering and simulated providers on loopback (SQLite and PostgreSQL).

Other test packages reuse them with ``from tests.demo.conftest import demo_run`` (or ``world``;
a fixture imported into a test module is collected there), or call ``run_demo_once`` themselves.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from api.app import create_app
from demo.platform import Platform
from demo.providers import CHAT_MODEL, PROVIDERS, SimulatedProvider
from demo.router import RouterConfig, create_router_app
from demo.run import demo_settings
from demo.servers import LoopbackServer
from jobs.scheduler import run_job
from metering.config import Settings
from metering.db import Database
from metering.models import UsageRecord
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET

# SPEC'd budget of the whole command; the demo aims at well under half of it.
DEMO_TIME_LIMIT_SECONDS = 120


@dataclass(frozen=True)
class DemoRun:
    data_dir: Path
    database_url: str
    summary: dict
    jwt_secret: str
    seconds: float
    returncode: int
    output: str

    @property
    def period(self) -> str:
        return self.summary["period"]


def newcomer_env(**extra: str) -> dict[str, str]:
    """The environment of a shell that never set a ``METERING_`` variable: every command's defaults apply."""
    return {key: value for key, value in os.environ.items() if not key.startswith("METERING_")} | extra


def run_demo_once(directory: Path, *options: str, columns: int = 160) -> DemoRun:
    """``metering demo --no-serve`` in a subprocess run in ``directory``, on the default data folder
    (``directory/.metering``) unless ``options`` name another; the summary goes to ``directory``."""
    data_dir, summary_path = directory / ".metering", directory / "summary.json"
    if "--data-dir" in options:
        data_dir = Path(options[options.index("--data-dir") + 1])
    command = [sys.executable, "-m", "cli.main", "demo", "--no-serve", "--json-summary", str(summary_path), *options]
    started = time.monotonic()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=DEMO_TIME_LIMIT_SECONDS * 2,
        cwd=directory,
        env=newcomer_env(COLUMNS=str(columns)),
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    if result.returncode != 0 or not summary_path.exists():
        pytest.fail(f"metering demo failed with exit code {result.returncode}:\n{output[-4000:]}")
    settings = demo_settings(data_dir)  # reads the secrets the demo generated; wipes nothing
    return DemoRun(
        data_dir=data_dir,
        database_url=settings.database_url,
        summary=orjson.loads(summary_path.read_bytes()),
        jwt_secret=settings.jwt_secret,
        seconds=seconds,
        returncode=result.returncode,
        output=output,
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return run_demo_once(tmp_path_factory.mktemp("demo"))


# Each user's access token: ``tok-<name>`` for plain HTTP, ``hf_test_<name>`` for huggingface_hub, which warns
# that ``bill_to`` is ignored when a token does not look like a Hub token.
USERS = {f"{prefix}{name}": name for name in ("alice", "mallory", "kai") for prefix in ("tok-", "hf_test_")}
KAI_TOGETHER_KEY = "kai-key"


@dataclass
class World:
    router_url: str
    router_app: FastAPI
    providers: dict[str, SimulatedProvider]
    http: httpx.AsyncClient
    platform: Platform
    db: Database

    async def chat(
        self, token: str, provider: str, *, bill_to: str | None = None, model: str = CHAT_MODEL
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} | ({"X-HF-Bill-To": bill_to} if bill_to else {})
        body = {"model": model, "provider": provider, "messages": [{"role": "user", "content": "hi"}]}
        return await self.http.post(f"{self.router_url}/v1/chat/completions", json=body, headers=headers)

    async def delivered(self) -> None:
        assert await self.router_app.state.sender.flush(timeout=20) is True

    async def collected(self) -> None:
        """Every spooled record delivered, then one collect-costs pass, as the scheduler runs it."""
        await self.delivered()
        await run_job("collect-costs", self.db)

    async def records(self) -> list[UsageRecord]:
        async with self.db.session_scope() as session:
            return list(await session.scalars(select(UsageRecord).order_by(UsageRecord.id)))

    async def requests_of(self, account: str, *, as_user: str) -> list[dict]:
        """The account's request log, read as ``as_user`` through ``GET /v1/accounts/{name}/requests``."""
        url = f"{self.platform.url}/v1/accounts/{account}/requests"
        response = await self.http.get(url, headers=self.platform.bearer(as_user))
        assert response.status_code == 200, response.text
        return response.json()["items"]

    async def billing_of(self, account: str, *, as_user: str) -> dict:
        response = await self.http.get(
            f"{self.platform.url}/v1/accounts/{account}/billing", headers=self.platform.bearer(as_user)
        )
        assert response.status_code == 200, response.text
        return response.json()

    def cost_of(self, provider_id: str, request_id: str) -> int:
        """What the provider's cost endpoint reports for ``request_id``."""
        return self.providers[provider_id].state.costs[request_id]

    def inference_calls(self) -> dict[str, int]:
        return {pid: provider.state.inference_calls for pid, provider in self.providers.items()}


@pytest.fixture
async def world(settings: Settings, db: Database, tmp_path: Path) -> AsyncIterator[World]:
    """acme (team) with alice as admin and fireworks-ai switched off; mallory (free) is no member; kai
    (pro) brings his own together key."""
    providers = {spec.id: SimulatedProvider(spec) for spec in PROVIDERS}
    metering = LoopbackServer("metering", create_app(settings, database=db))
    # Each server is stopped even when a later one fails to start: one left serving breaks the tests after it.
    async with contextlib.AsyncExitStack() as stack:
        for server in [*(provider.server for provider in providers.values()), metering]:
            await server.start()
            stack.push_async_callback(server.stop)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        platform = Platform(http, metering_url=metering.url, service_token=SERVICE_TOKEN, jwt_secret=TEST_JWT_SECRET)
        for provider_id, provider in providers.items():
            await platform.put_provider(provider_id, provider.registration())
        for name, kind, plan in (
            ("alice", "user", "pro"),
            ("mallory", "user", "free"),
            ("kai", "user", "pro"),
            ("acme", "org", "team"),
        ):
            await platform.put_account(name, kind=kind, plan=plan)
        await platform.put_member("acme", "alice", "admin")
        await platform.set_disabled_providers("acme", ["fireworks-ai"], as_user="alice")
        config = RouterConfig(
            metering_url=metering.url,
            service_token=SERVICE_TOKEN,
            provider_urls={pid: provider.url for pid, provider in providers.items()},
            provider_keys={pid: "platform-key" for pid in providers},
            users=USERS,
            spool_path=tmp_path / "router" / "spool.db",
            custom_keys={"kai": {"together": KAI_TOGETHER_KEY}},
        )
        router_app = create_router_app(config)
        router = LoopbackServer("router", router_app)
        await router.start()
        stack.push_async_callback(router.stop)
        yield World(router.url, router_app, providers, http, platform, db)
