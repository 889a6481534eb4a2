"""The hook against a real ``metering serve``: records spooled while Metering is down survive a
``kill -9`` of the router and are stored exactly once when it comes back (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import func, select

from metering.db import Database
from metering.models import UsageRecord
from metering_hook import Spool, UsageSender, fetch_request_id_headers
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY
from tests.hook.router_process import routed_record
from tests.support.servers import free_port, metering_server

PROVIDER = {
    "url": "http://127.0.0.1:9",
    "request_id_header": "Inference-Id",
    "pricing": "cost_endpoint",
    "cost_endpoint": "http://127.0.0.1:9/billing/costs",
    "cost_token": "provider-token",
    "credit_eligible": True,
    "default_estimate_nano_usd": 100_000,
}


@contextmanager
def metering(database_url: str, data_dir: Path, port: int) -> Iterator[str]:
    env = {
        "METERING_DATABASE_URL": database_url,
        "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
        "METERING_SECRET_KEY": TEST_SECRET_KEY,
        "METERING_JWT_SECRET": TEST_JWT_SECRET,
        "METERING_DATA_DIR": str(data_dir),
    }
    with metering_server(env, port=port) as base_url:
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        for path, body in [
            ("/internal/v1/providers/together", PROVIDER),
            ("/internal/v1/accounts/alice", {"kind": "user", "plan": "pro"}),
            ("/internal/v1/accounts/acme", {"kind": "org", "plan": "team", "seats": 2}),
            ("/internal/v1/orgs/acme/members/alice", {"role": "write"}),
        ]:
            assert httpx.put(base_url + path, json=body, headers=headers).status_code == 200
        yield base_url


def start_router(spool_path: Path, base_url: str, count: int, pause: float = 0.0) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "tests.hook.router_process",
        str(spool_path),
        base_url,
        SERVICE_TOKEN,
        str(count),
        str(pause),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def read_until(process: subprocess.Popen, stop: str) -> list[int]:
    """The appends the router confirmed, up to the line ``stop``."""
    assert process.stdout is not None
    confirmed = []
    for line in process.stdout:
        if line.strip() == stop:
            return confirmed
        confirmed.append(int(line))
    raise AssertionError(f"router exited with {process.wait()} before printing {stop!r}")


def kill_9(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


async def stored(database_url: str) -> tuple[int, list[str], dict[str, str]]:
    """(row count, request ids in order, billing account by request id) of ``usage_records``."""
    database = Database(database_url)
    try:
        async with database.session_scope() as session:
            count = await session.scalar(select(func.count()).select_from(UsageRecord))
            rows = (await session.execute(select(UsageRecord.request_id, UsageRecord.billing_account))).all()
    finally:
        await database.dispose()
    return count, sorted(r.request_id for r in rows), {r.request_id: r.billing_account for r in rows}


async def test_spooled_while_down_survives_kill_9_and_is_stored_once(database_url: str, tmp_path: Path) -> None:
    count = 600
    port = free_port()
    spool_path = tmp_path / "router" / "usage-spool.db"
    router = start_router(spool_path, f"http://127.0.0.1:{port}", count)  # nothing listens there yet
    read_until(router, "spooled")
    kill_9(router)

    with metering(database_url, tmp_path, port) as base_url, Spool(spool_path) as spool:
        assert spool.pending_count() == count
        sender = UsageSender(spool, base_url, SERVICE_TOKEN, batch_size=250)
        assert await sender.flush(60) is True
        await sender.stop()
        assert (sender.stats.accepted, sender.stats.duplicates, sender.stats.dead_lettered) == (count, 0, 0)
        assert spool.pending_count() == 0
        assert spool.dead_letter_count() == 0

    rows, request_ids, billed = await stored(database_url)
    assert rows == count
    assert request_ids == [f"req-{n:06d}" for n in range(count)]
    assert billed["req-000000"] == "acme"
    assert billed["req-000001"] == "alice"


async def test_router_killed_mid_delivery_loses_nothing_and_doubles_nothing(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    spool_path = tmp_path / "usage-spool.db"
    with metering(database_url, tmp_path, port) as base_url:
        router = start_router(spool_path, base_url, 100_000, pause=0.0005)
        assert router.stdout is not None
        for _ in range(800):
            router.stdout.readline()
        kill_9(router)  # somewhere between spooling, posting, committing and forgetting a batch
        # The router prints n after append n returned; count the complete lines it got out before dying.
        printed = router.stdout.read()
        confirmed = 800 + printed[: printed.rfind("\n") + 1].count("\n")

        with Spool(spool_path) as spool:
            sender = UsageSender(spool, base_url, SERVICE_TOKEN, batch_size=500)
            assert await sender.flush(60) is True
            await sender.stop()
            assert spool.pending_count() == 0

    rows, request_ids, _ = await stored(database_url)
    assert rows == len(request_ids) == len(set(request_ids))
    # Every confirmed append is stored; at most the one append in flight at the kill came on top.
    expected = [f"req-{n:06d}" for n in range(confirmed)]
    assert request_ids[: len(expected)] == expected
    assert len(request_ids) - len(expected) <= 1


async def test_rejected_record_is_dead_lettered_and_the_rest_delivered(database_url: str, tmp_path: Path) -> None:
    with metering(database_url, tmp_path, free_port()) as base_url, Spool(tmp_path / "spool.db") as spool:
        assert await fetch_request_id_headers(base_url) == {"together": "Inference-Id"}
        spool.append(routed_record(0))
        spool.append(routed_record(1) | {"provider": "nope"})
        spool.append(routed_record(2))
        spool.append(routed_record(3) | {"duration_ms": -5})
        sender = UsageSender(spool, base_url, SERVICE_TOKEN)
        assert await sender.flush(30) is True
        await sender.stop()
        dead = spool.dead_letters()
        assert [(d.record["request_id"], d.record["provider"]) for d in dead] == [
            ("req-000001", "nope"),
            ("req-000003", "together"),
        ]
        assert "unknown provider 'nope'" in dead[0].reason
        assert "duration_ms" in dead[1].reason
        assert spool.pending_count() == 0

    rows, request_ids, _ = await stored(database_url)
    assert (rows, request_ids) == (2, ["req-000000", "req-000002"])


async def test_wrong_token_keeps_records_until_fixed(database_url: str, tmp_path: Path) -> None:
    with metering(database_url, tmp_path, free_port()) as base_url, Spool(tmp_path / "spool.db") as spool:
        spool.append(routed_record(0))
        wrong = UsageSender(spool, base_url, "not-the-token", backoff_base=0.05, backoff_cap=0.1)
        assert await wrong.flush(0.3) is False
        await wrong.stop(timeout=0)
        assert (wrong.stats.last_error or "").startswith("HTTP 401")
        assert (spool.pending_count(), spool.dead_letter_count()) == (1, 0)
        right = UsageSender(spool, base_url, SERVICE_TOKEN)
        assert await right.flush(30) is True
        await right.stop()
    assert (await stored(database_url))[0] == 1
