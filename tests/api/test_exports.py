"""Finance exports over HTTP and the command line (SPEC §8): every report, every format, exact totals."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from metering.config import Settings
from metering.db import Database
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY
from tests.factories.billing_data import as_user, cost_posting, grant_posting, insert_usage, post, seed_world
from tests.support.servers import metering_server

FINANCE = as_user("fin", "finance")
PERIOD = "2026-10"
INJECTION = '=HYPERLINK("http://evil.example","click")'


@pytest.fixture
async def ledger_world(db: Database) -> None:
    """acme (team, 2 seats): 4e9 of credits, then 1.5e9 and 3e9 of cost (the second 0.5e9 over the credits)."""
    await seed_world(db)
    await post(
        db,
        grant_posting("acme", PERIOD, 4_000_000_000),
        cost_posting("cost:1", PERIOD, account="acme", provider="together", credits=1_500_000_000, memo=INJECTION),
        cost_posting(
            "cost:2", PERIOD, account="acme", provider="fireworks-ai", credits=2_500_000_000, payg=500_000_000
        ),
        cost_posting("cost:3", PERIOD, account="erin", provider="together", payg=7),
        cost_posting("cost:4", "2026-11", account="acme", provider="together", payg=1_000_000),
    )
    await insert_usage(
        db,
        [
            {
                "request_id": "u1",
                "user": "bob",
                "billing_account": "acme",
                "started_at": datetime(2026, 10, 9, tzinfo=UTC),
                "status": "unpriced",
            },
            {
                "request_id": "u2",
                "user": "bob",
                "billing_account": "acme",
                "started_at": datetime(2026, 10, 9, tzinfo=UTC),
                "status": "pending",
            },
            {
                "request_id": "u3",
                "user": "bob",
                "billing_account": "acme",
                "started_at": datetime(2026, 11, 1, tzinfo=UTC),
                "status": "unpriced",
            },
        ],
    )


async def _ledger_sum(db: Database, period: str, kind: str | None = None) -> tuple[int, int]:
    """(entries, sum of amounts) of the period's transactions, optionally on one kind of ledger account."""
    statement = (
        select(func.count(), func.coalesce(func.sum(LedgerEntry.amount_nano_usd), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.ledger_account_id)
        .where(LedgerTransaction.period == period)
    )
    if kind:
        statement = statement.where(LedgerAccount.kind == kind)
    async with db.session_scope() as session:
        count, total = (await session.execute(statement)).one()
    return int(count), int(total)


async def _get(client: httpx.AsyncClient, report: str, fmt: str) -> httpx.Response:
    response = await client.get(
        f"/v1/finance/exports/{report}", params={"period": PERIOD, "format": fmt}, headers=FINANCE
    )
    assert response.status_code == 200, response.text
    return response


def _jsonl(response: httpx.Response) -> list[dict]:
    return [orjson.loads(line) for line in response.content.splitlines()]


class TestLedgerReport:
    async def test_csv_rows_are_the_entries_and_formula_cells_are_defused(
        self, client: httpx.AsyncClient, db: Database, ledger_world: None
    ) -> None:
        response = await _get(client, "ledger", "csv")
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == f'attachment; filename="ledger-{PERIOD}.csv"'
        assert response.content.endswith(b"\r\n")
        rows = list(csv.DictReader(io.StringIO(response.text)))

        count, total = await _ledger_sum(db, PERIOD)
        assert (len(rows), sum(int(r["amount_nano_usd"]) for r in rows)) == (count, total) == (9, 0)
        assert {r["memo"] for r in rows if r["idempotency_key"] == "cost:1"} == {"'" + INJECTION}
        assert {r["transaction_kind"] for r in rows} == {"credit_grant", "request_cost"}
        payable = [r for r in rows if r["ledger_account"] == f"payable:together:{PERIOD}"]
        assert sorted(int(r["amount_nano_usd"]) for r in payable) == [-1_500_000_000, -7]

    async def test_jsonl_and_parquet_carry_the_same_rows(
        self, client: httpx.AsyncClient, db: Database, ledger_world: None
    ) -> None:
        lines = _jsonl(await _get(client, "ledger", "jsonl"))
        table = pq.read_table(io.BytesIO((await _get(client, "ledger", "parquet")).content))

        assert table.to_pylist() == [
            {**line, "created_at": datetime.fromisoformat(line["created_at"])} for line in lines
        ]
        assert next(line["memo"] for line in lines if line["idempotency_key"] == "cost:1") == INJECTION
        assert sum(table.column("amount_nano_usd").to_pylist()) == 0
        assert len(lines) == (await _ledger_sum(db, PERIOD))[0]


class TestSummaryReports:
    async def test_provider_payables_equal_the_payable_entries(
        self, client: httpx.AsyncClient, db: Database, ledger_world: None
    ) -> None:
        rows = _jsonl(await _get(client, "provider-payables", "jsonl"))
        assert rows == [
            {"provider_id": "fireworks-ai", "period": PERIOD, "payable_nano_usd": 3_000_000_000, "entries": 1},
            {"provider_id": "together", "period": PERIOD, "payable_nano_usd": 1_500_000_007, "entries": 2},
        ]
        assert sum(r["payable_nano_usd"] for r in rows) == -(await _ledger_sum(db, PERIOD, "payable"))[1]

    async def test_receivables(self, client: httpx.AsyncClient, db: Database, ledger_world: None) -> None:
        rows = list(csv.DictReader(io.StringIO((await _get(client, "receivables", "csv")).text)))
        assert rows == [
            {"account_name": "acme", "period": PERIOD, "receivable_nano_usd": "500000000", "entries": "1"},
            {"account_name": "erin", "period": PERIOD, "receivable_nano_usd": "7", "entries": "1"},
        ]
        assert sum(int(r["receivable_nano_usd"]) for r in rows) == (await _ledger_sum(db, PERIOD, "receivable"))[1]

    async def test_credits(self, client: httpx.AsyncClient, db: Database, ledger_world: None) -> None:
        table = pq.read_table(io.BytesIO((await _get(client, "credits", "parquet")).content))
        assert table.to_pylist() == [
            {
                "account_name": "acme",
                "period": PERIOD,
                "granted_nano_usd": 4_000_000_000,
                "used_nano_usd": 4_000_000_000,
                "other_nano_usd": 0,
                "balance_nano_usd": 0,
            },
        ]
        assert (await _ledger_sum(db, PERIOD, "credits"))[1] == 0

    async def test_unpriced_lists_the_periods_never_charged_requests(
        self, client: httpx.AsyncClient, ledger_world: None
    ) -> None:
        rows = _jsonl(await _get(client, "unpriced", "jsonl"))
        assert [(r["request_id"], r["status"], r["billing_account"], r["started_at"]) for r in rows] == [
            ("u1", "unpriced", "acme", "2026-10-09T00:00:00Z")
        ]

    async def test_an_empty_period_is_a_header_only_csv(self, client: httpx.AsyncClient, ledger_world: None) -> None:
        response = await client.get("/v1/finance/exports/receivables?period=2020-01&format=csv", headers=FINANCE)
        assert response.text == "account_name,period,receivable_nano_usd,entries\r\n"


class TestValidation:
    @pytest.mark.parametrize(
        "route",
        [
            "/v1/finance/exports/balances?period=2026-10",
            "/v1/finance/exports/ledger?period=2026-10&format=xlsx",
            "/v1/finance/exports/ledger?period=10-2026",
        ],
    )
    async def test_unknown_report_format_or_period_is_422(self, client: httpx.AsyncClient, route: str) -> None:
        assert (await client.get(route, headers=FINANCE)).status_code == 422


def _server_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {
        "METERING_ENVIRONMENT": "embedded",
        "METERING_DATABASE_URL": settings.database_url,
        "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
        "METERING_SECRET_KEY": TEST_SECRET_KEY,
        "METERING_JWT_SECRET": TEST_JWT_SECRET,
        "METERING_DATA_DIR": str(tmp_path / "data"),
    }


class TestOverRealProcesses:
    async def test_a_served_export_streams_over_loopback(
        self, settings: Settings, db: Database, ledger_world: None, tmp_path: Path
    ) -> None:
        with metering_server(_server_env(settings, tmp_path)) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                async with http.stream(
                    "GET", f"/v1/finance/exports/ledger?period={PERIOD}&format=parquet", headers=FINANCE
                ) as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"] == "application/vnd.apache.parquet"
                    assert "content-length" not in response.headers  # streamed, not buffered
                    body = b"".join([chunk async for chunk in response.aiter_bytes()])
                refused = await http.get(f"/v1/finance/exports/ledger?period={PERIOD}", headers=as_user("alice"))
        table = pq.read_table(io.BytesIO(body))
        assert (table.num_rows, sum(table.column("amount_nano_usd").to_pylist())) == await _ledger_sum(db, PERIOD)
        assert refused.status_code == 403

    async def test_the_command_writes_the_same_report(
        self, settings: Settings, db: Database, ledger_world: None, tmp_path: Path
    ) -> None:
        out = tmp_path / "payables.csv"
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "export",
            "provider-payables",
            "--period",
            PERIOD,
            "--format",
            "csv",
            "--out",
            str(out),
            "--no-progress",
        ]
        result = subprocess.run(
            command, env={**os.environ, **_server_env(settings, tmp_path)}, capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr.decode()
        assert out.read_bytes().decode() == (
            "provider_id,period,payable_nano_usd,entries\r\n"
            f"fireworks-ai,{PERIOD},3000000000,1\r\n"
            f"together,{PERIOD},1500000007,2\r\n"
        )
        assert b"2 rows" in result.stderr
        assert not (tmp_path / "payables.csv.partial").exists()

    async def test_the_command_refuses_an_unknown_report(self, settings: Settings, tmp_path: Path) -> None:
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "export",
            "balances",
            "--period",
            PERIOD,
            "--out",
            str(tmp_path / "x"),
        ]
        result = subprocess.run(
            command, env={**os.environ, **_server_env(settings, tmp_path)}, capture_output=True, timeout=60
        )
        assert result.returncode == 2
        assert not (tmp_path / "x").exists()
