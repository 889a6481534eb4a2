"""Estimate drift (estimates against reported prices): exact numbers, a property check against a plain
Python reference, the finance export over HTTP and the command line, and the billing summary field."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import delete

from metering.analytics.drift import ModelDrift, drift_service
from metering.config import Settings
from metering.db import Database
from metering.models import UsageRecord, UsageRequestKey
from tests.api.test_exports import _server_env
from tests.factories.billing_data import as_user, insert_usage, seed_world

PERIOD = "2026-10"
IN_PERIOD = datetime(2026, 10, 9, tzinfo=UTC)
FINANCE = as_user("fin", "finance")
EXPORT_COLUMNS = (
    "provider_id,model,period,requests,mean_estimate_nano_usd,mean_price_nano_usd,"
    "mean_error_nano_usd,p95_abs_error_nano_usd"
)


def _row(request_id: str, account: str, *, estimate: int, cost: int | None = None, **extra: object) -> dict:
    """A usage row of the period billed to ``account``; priced when ``cost`` is given."""
    row = {"request_id": request_id, "user": account, "started_at": IN_PERIOD, "estimate": estimate, **extra}
    if cost is not None:
        row.update(status="priced", cost=cost)
    return row


@pytest.fixture
async def drift_world(db: Database) -> None:
    """acme: together/org/a estimates 100/100/100 priced 90/100/150, fireworks-ai/org/b 200 priced 100;
    erin: together/org/a 1000 priced 10; plus rows that must not count."""
    await seed_world(db)
    await insert_usage(
        db,
        [
            _row("a1", "acme", estimate=100, cost=90, model="org/a"),
            _row("a2", "acme", estimate=100, cost=100, model="org/a"),
            _row("a3", "acme", estimate=100, cost=150, model="org/a"),
            _row("b1", "acme", estimate=200, cost=100, model="org/b", provider="fireworks-ai"),
            _row("e1", "erin", estimate=1_000, cost=10, model="org/a"),
            # Never counted: no estimate, not priced, custom key, another period.
            _row("x1", "acme", estimate=0, cost=5_000, model="org/a"),
            _row("x2", "acme", estimate=100, model="org/a"),
            _row("x3", "acme", estimate=100, model="org/a", status="quarantined"),
            _row("x4", "acme", estimate=0, model="org/a", custom_key=True),
            _row("x5", "acme", estimate=100, cost=9_999, model="org/a", started_at=datetime(2026, 11, 1, tzinfo=UTC)),
        ],
    )


class TestEstimateDrift:
    async def test_exact_numbers_per_provider_and_model(self, db: Database, drift_world: None) -> None:
        async with db.session_scope() as session:
            acme = await drift_service.estimate_drift(session, period=PERIOD, account="acme")
            everyone = await drift_service.estimate_drift(session, period=PERIOD)

        assert acme == [
            ModelDrift("fireworks-ai", "org/b", PERIOD, 1, 200, 100, -100, 100),
            # errors -10, 0, 50: mean floor(40/3) = 13, p95 = the 3rd of 3 sorted |errors| = 50
            ModelDrift("together", "org/a", PERIOD, 3, 100, 113, 13, 50),
        ]
        # With erin's -990: mean error floor(-950/4) = -238 (towards -inf), mean price floor(350/4) = 87.
        assert everyone == [
            ModelDrift("fireworks-ai", "org/b", PERIOD, 1, 200, 100, -100, 100),
            ModelDrift("together", "org/a", PERIOD, 4, 325, 87, -238, 990),
        ]

    async def test_a_period_without_priced_estimates_is_empty(self, db: Database, drift_world: None) -> None:
        async with db.session_scope() as session:
            assert await drift_service.estimate_drift(session, period="2026-09") == []
            assert await drift_service.estimate_drift(session, period=PERIOD, account="bob") == []


def _reference(rows: list[tuple[str, str, int, int]]) -> list[ModelDrift]:
    """The drift computed the plain way: exact fractions, floored; p95 = ceil(0.95 n)-th smallest |error|."""
    groups: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for provider, model, estimate, price in rows:
        groups[(provider, model)].append((estimate, price))
    result = []
    for (provider, model), pairs in sorted(groups.items()):
        n = len(pairs)
        errors = sorted(abs(price - estimate) for estimate, price in pairs)
        result.append(
            ModelDrift(
                provider,
                model,
                PERIOD,
                n,
                math.floor(Fraction(sum(e for e, _ in pairs), n)),
                math.floor(Fraction(sum(p for _, p in pairs), n)),
                math.floor(Fraction(sum(p - e for e, p in pairs), n)),
                errors[math.ceil(Fraction(95 * n, 100)) - 1],
            )
        )
    return result


# Small amounts make ties and zero errors common; large ones check there is no overflow or rounding.
_AMOUNT = st.one_of(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=10**12))
_USAGE = st.tuples(
    st.sampled_from(["together", "fireworks-ai"]),
    st.sampled_from(["org/a", "org/b"]),
    st.one_of(st.just(0), _AMOUNT),  # estimate; 0 = none, never counted
    _AMOUNT,  # price
    st.booleans(),  # priced (else still pending)
)


@pytest.fixture
async def world_once(db: Database) -> None:
    """Accounts and providers, made once per test (not per Hypothesis example)."""
    await seed_world(db)


class TestAgainstReference:
    @hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(usages=st.lists(_USAGE, max_size=40))
    async def test_sql_aggregation_equals_the_reference(
        self, db: Database, world_once: None, usages: list[tuple]
    ) -> None:
        rows = [
            _row(f"r{i}", "acme", estimate=estimate, cost=price if priced else None, provider=provider, model=model)
            for i, (provider, model, estimate, price, priced) in enumerate(usages)
        ]
        await insert_usage(db, rows)
        try:
            async with db.session_scope() as session:
                computed = await drift_service.estimate_drift(session, period=PERIOD, account="acme")
        finally:
            async with db.session_scope() as session:
                await session.execute(delete(UsageRecord))
                await session.execute(delete(UsageRequestKey))  # PostgreSQL's global keys of the records
        counted = [(p, m, e, c) for p, m, e, c, priced in usages if priced and e > 0]
        assert computed == _reference(counted)


def _jsonl(response: httpx.Response) -> list[dict]:
    return [orjson.loads(line) for line in response.content.splitlines()]


class TestDriftExport:
    async def test_jsonl_rows_for_finance(self, client: httpx.AsyncClient, drift_world: None) -> None:
        response = await client.get(f"/v1/finance/exports/drift?period={PERIOD}&format=jsonl", headers=FINANCE)

        assert response.status_code == 200, response.text
        assert response.headers["content-disposition"] == f'attachment; filename="drift-{PERIOD}.jsonl"'
        assert _jsonl(response) == [
            {
                "provider_id": "fireworks-ai",
                "model": "org/b",
                "period": PERIOD,
                "requests": 1,
                "mean_estimate_nano_usd": 200,
                "mean_price_nano_usd": 100,
                "mean_error_nano_usd": -100,
                "p95_abs_error_nano_usd": 100,
            },
            {
                "provider_id": "together",
                "model": "org/a",
                "period": PERIOD,
                "requests": 4,
                "mean_estimate_nano_usd": 325,
                "mean_price_nano_usd": 87,
                "mean_error_nano_usd": -238,
                "p95_abs_error_nano_usd": 990,
            },
        ]

    async def test_csv_and_an_empty_period(self, client: httpx.AsyncClient, drift_world: None) -> None:
        full = await client.get(f"/v1/finance/exports/drift?period={PERIOD}&format=csv", headers=FINANCE)
        empty = await client.get("/v1/finance/exports/drift?period=2020-01&format=csv", headers=FINANCE)

        assert list(csv.reader(io.StringIO(full.text)))[1:] == [
            ["fireworks-ai", "org/b", PERIOD, "1", "200", "100", "-100", "100"],
            ["together", "org/a", PERIOD, "4", "325", "87", "-238", "990"],
        ]
        assert empty.text == EXPORT_COLUMNS + "\r\n"

    @pytest.mark.parametrize("headers", [as_user("alice"), as_user("fin", "platform_operator")])
    async def test_refused_without_the_finance_role(
        self, client: httpx.AsyncClient, drift_world: None, headers: dict[str, str]
    ) -> None:
        response = await client.get(f"/v1/finance/exports/drift?period={PERIOD}", headers=headers)
        assert (response.status_code, response.json()["error"]) == (403, "NotPermitted")

    async def test_the_command_writes_the_report(self, settings: Settings, drift_world: None, tmp_path: Path) -> None:
        out = tmp_path / "drift.csv"
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "export",
            "drift",
            "--period",
            PERIOD,
            "--format",
            "csv",
            "--out",
            str(out),
            "--no-progress",
        ]
        environment = {**os.environ, **_server_env(settings, tmp_path)}
        result = subprocess.run(command, env=environment, capture_output=True, timeout=60)

        assert result.returncode == 0, result.stderr.decode()
        assert out.read_bytes().decode() == (
            f"{EXPORT_COLUMNS}\r\n"
            f"fireworks-ai,org/b,{PERIOD},1,200,100,-100,100\r\n"
            f"together,org/a,{PERIOD},4,325,87,-238,990\r\n"
        )


class TestBillingSummaryField:
    async def test_an_org_admin_sees_only_the_orgs_requests(self, client: httpx.AsyncClient, drift_world: None) -> None:
        response = await client.get(f"/v1/accounts/acme/billing?period={PERIOD}", headers=as_user("alice"))

        assert response.status_code == 200, response.text
        assert response.json()["estimate_drift"] == [
            {
                "provider": "fireworks-ai",
                "model": "org/b",
                "requests": 1,
                "mean_error_nano_usd": -100,
                "p95_abs_error_nano_usd": 100,
            },
            {
                "provider": "together",
                "model": "org/a",
                "requests": 3,
                "mean_error_nano_usd": 13,
                "p95_abs_error_nano_usd": 50,
            },
        ]

    async def test_a_user_sees_their_own_and_existing_fields_stay(
        self, client: httpx.AsyncClient, drift_world: None
    ) -> None:
        erin = (await client.get(f"/v1/accounts/erin/billing?period={PERIOD}", headers=as_user("erin"))).json()
        bob = (await client.get(f"/v1/accounts/bob/billing?period={PERIOD}", headers=as_user("bob"))).json()

        assert erin["estimate_drift"] == [
            {
                "provider": "together",
                "model": "org/a",
                "requests": 1,
                "mean_error_nano_usd": -990,
                "p95_abs_error_nano_usd": 990,
            },
        ]
        assert bob["estimate_drift"] == []
        assert {"account", "credits_granted_nano_usd", "pending_estimate_nano_usd", "held_nano_usd"} <= set(bob)
