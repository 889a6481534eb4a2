"""Provider reconciliations over HTTP and the command line (SPEC §8): the upload, who may, refusals, the export."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from api.app import create_app
from metering.config import Settings
from metering.db import Database
from metering.exports.reports import REPORTS
from metering.exports.repository import export_repository
from metering.exports.service import export_service
from metering.exports.writers import WRITERS
from metering.models import ReconciliationItem, ReconciliationLine
from metering.periods import period_bounds
from metering.reconciliation import statement as statement_module
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY
from tests.factories.accounts import create_account
from tests.factories.billing_data import as_user
from tests.factories.providers import create_provider
from tests.metering.ledger.helpers import store_usage
from tests.metering.reconciliation.world import PERIOD, STATEMENT, chunks, csv_lines, priced_month

FINANCE = as_user("fin", "finance")
CSV = {"Content-Type": "text/csv"}
ROUTE = f"/v1/finance/reconciliations/together?period={PERIOD}"


@pytest.fixture
async def month(db: Database) -> None:
    await priced_month(db)


async def upload(
    client: httpx.AsyncClient,
    body: bytes | AsyncIterator[bytes],
    *,
    route: str = ROUTE,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(route, content=body, headers={**(headers or FINANCE), **CSV})


class TestUpload:
    async def test_the_outcome_is_stored_and_answered_in_full(self, client: httpx.AsyncClient, month: None) -> None:
        response = await upload(client, csv_lines(STATEMENT.items(), newline=b"\r\n"))
        assert response.status_code == 201, response.text
        body = response.json()
        assert datetime.fromisoformat(body.pop("created_at")).tzinfo is not None
        assert body == {
            "id": 1,
            "provider": "together",
            "period": PERIOD,
            "lines": 9,
            "matched": 3,
            "amount_mismatch_count": 1,
            "only_provider_count": 5,
            "only_ledger_count": 1,
            "provider_total_nano_usd": 2_901_615,
            "ledger_total_nano_usd": 3_300_000,
            "created_by": "fin",
            "reason": None,
            "supersedes_id": None,
            "amount_mismatch": [
                {"request_id": "r-mismatch", "ledger_nano_usd": 1_000_000, "provider_nano_usd": 1_300_000}
            ],
            "only_provider": [
                {"request_id": "ghost", "provider_nano_usd": 42},
                {"request_id": "r-custom", "provider_nano_usd": 900},
                {"request_id": "r-pending", "provider_nano_usd": 500},
                {"request_id": "r-shared", "provider_nano_usd": 123},
                {"request_id": "r-this-month", "provider_nano_usd": 50},
            ],
            "only_ledger": [{"request_id": "r-ledger-only", "ledger_nano_usd": 700_000}],
        }

    async def test_a_streamed_body_larger_than_the_apps_usual_cap(
        self, settings: Settings, db: Database, month: None
    ) -> None:
        """The upload has its own cap (1 GiB); every other route keeps the app's."""
        app = create_app(settings.model_copy(update={"max_body_bytes": 1024}), database=db)
        statement = csv_lines([*STATEMENT.items(), *((f"extra-{i:05d}", i) for i in range(500))])
        assert len(statement) > 4 * 1024
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as http:
            response = await upload(http, chunks(statement, 1000))
            other = await http.post(
                "/internal/v1/usage",
                content=b"{" + b" " * 2048 + b"}",
                headers={"Authorization": f"Bearer {SERVICE_TOKEN}", "Content-Type": "application/json"},
            )
        assert response.status_code == 201, response.text
        assert (response.json()["lines"], response.json()["only_provider_count"]) == (509, 505)
        assert other.status_code == 413

    async def test_the_reason_is_kept_and_a_second_upload_supersedes_the_first(
        self, client: httpx.AsyncClient, month: None
    ) -> None:
        first = await upload(client, csv_lines(STATEMENT.items()), route=f"{ROUTE}&reason=November+statement")
        second = await upload(client, csv_lines([("r-match", 1_200_000)]), headers=as_user("fin2", "finance"))
        assert (first.json()["reason"], first.json()["supersedes_id"]) == ("November statement", None)
        assert (second.json()["created_by"], second.json()["supersedes_id"]) == ("fin2", first.json()["id"])


class TestWhoMay:
    @pytest.mark.parametrize("headers", [as_user("alice"), as_user("ops", "platform_admin")])
    async def test_anyone_without_the_finance_role_is_refused_before_the_body_is_read(
        self, client: httpx.AsyncClient, month: None, headers: dict[str, str]
    ) -> None:
        response = await upload(client, csv_lines(STATEMENT.items()), headers=headers)
        assert response.status_code == 403
        assert response.json() == {"error": "NotPermitted", "detail": "provider reconciliations need the finance role"}

    async def test_no_token_is_401(self, anonymous_client: httpx.AsyncClient, month: None) -> None:
        response = await anonymous_client.post(ROUTE, content=csv_lines([]), headers=CSV)
        assert response.status_code == 401

    async def test_the_listing_is_for_finance_and_platform_admins(self, client: httpx.AsyncClient, month: None) -> None:
        uploaded = (await upload(client, csv_lines(STATEMENT.items()))).json()
        route = f"/v1/finance/reconciliations?period={PERIOD}"
        for headers in (FINANCE, as_user("ops", "platform_admin")):
            listed = await client.get(route, headers=headers)
            assert listed.status_code == 200
            (item,) = listed.json()["items"]
            assert item == {
                k: v for k, v in uploaded.items() if k not in ("amount_mismatch", "only_provider", "only_ledger")
            }
        assert (await client.get(route, headers=as_user("alice"))).status_code == 403
        assert (await client.get(f"{route}&provider=fireworks-ai", headers=FINANCE)).json() == {"items": []}


class TestRefusals:
    async def test_an_unknown_provider_is_404(self, client: httpx.AsyncClient, month: None) -> None:
        response = await upload(client, csv_lines([]), route=f"/v1/finance/reconciliations/nope?period={PERIOD}")
        assert response.status_code == 404
        assert response.json() == {"error": "ProviderNotFound", "detail": "no provider 'nope'"}

    @pytest.mark.parametrize("query", ["period=2026-13", "period=1969-12", "period=9999-01", "period=26-11", ""])
    async def test_a_period_out_of_bounds_or_missing_is_422(
        self, client: httpx.AsyncClient, month: None, query: str
    ) -> None:
        response = await upload(client, csv_lines([]), route=f"/v1/finance/reconciliations/together?{query}")
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"

    async def test_a_bad_line_is_422_naming_it_and_nothing_is_kept(
        self, client: httpx.AsyncClient, month: None
    ) -> None:
        response = await upload(client, csv_lines([("a", 1), ("b", 2)]) + b"c,1.0\n")
        assert response.status_code == 422
        assert response.json() == {
            "error": "InvalidStatement",
            "detail": "line 4: cost_nano_usd '1.0' is not a whole, non-negative number of nano-USD (digits only)",
        }
        listed = await client.get(f"/v1/finance/reconciliations?period={PERIOD}", headers=FINANCE)
        assert listed.json() == {"items": []}

    async def test_a_bad_header_is_422(self, client: httpx.AsyncClient, month: None) -> None:
        response = await upload(client, b"id,cost\na,1\n")
        assert (response.status_code, response.json()["detail"]) == (
            422,
            "line 1: the header must be exactly 'request_id,cost_nano_usd', got 'id,cost'",
        )

    async def test_a_request_id_stated_twice_is_422_naming_both_lines(
        self, client: httpx.AsyncClient, month: None
    ) -> None:
        response = await upload(client, csv_lines([("a", 1), ("b", 2), ("a", 1)]))
        assert response.status_code == 422
        assert response.json() == {
            "error": "DuplicateRequestId",
            "detail": "line 4: request_id 'a' was already stated on line 2",
        }

    async def test_more_lines_than_a_statement_may_have_is_413(
        self, client: httpx.AsyncClient, month: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(statement_module, "MAX_LINES", 2)
        response = await upload(client, csv_lines([("a", 1), ("b", 2), ("c", 3)]))
        assert response.status_code == 413
        assert response.json() == {
            "error": "StatementTooLarge",
            "detail": "the statement has more than 2 lines after its header",
        }


@pytest.fixture
async def reconciled(client: httpx.AsyncClient, month: None) -> dict[str, int]:
    """together reconciled twice (the export takes the second), fireworks-ai once; ids by name."""
    first = await upload(client, csv_lines(STATEMENT.items()))
    second = await upload(client, csv_lines([("r-match", 1_200_000), ("=HYPERLINK(1)", 7), ("r-mismatch", 999)]))
    fireworks = await upload(
        client,
        csv_lines([("r-shared", 124)]),
        route=f"/v1/finance/reconciliations/fireworks-ai?period={PERIOD}",
    )
    return {"first": first.json()["id"], "second": second.json()["id"], "fireworks": fireworks.json()["id"]}


def _expected_rows(ids: dict[str, int]) -> list[tuple[int, str, str, int | None, int | None]]:
    """(reconciliation, kind, request id, ledger, provider) of the export, sorted."""
    return sorted(
        [
            (ids["second"], "only_provider", "=HYPERLINK(1)", None, 7),
            (ids["second"], "amount_mismatch", "r-mismatch", 1_000_000, 999),
            (ids["second"], "only_ledger", "r-late", 400_000, None),
            (ids["second"], "only_ledger", "r-ledger-only", 700_000, None),
            (ids["second"], "only_ledger", "r-zero", 0, None),
            (ids["fireworks"], "amount_mismatch", "r-shared", 123, 124),
        ]
    )


def _cell(value: str) -> int | None:
    return None if value == "" else int(value)


class TestExport:
    async def test_csv_holds_the_latest_reconciliation_of_each_provider_formula_safe(
        self, client: httpx.AsyncClient, reconciled: dict[str, int]
    ) -> None:
        response = await client.get(f"/v1/finance/exports/reconciliation?period={PERIOD}&format=csv", headers=FINANCE)
        assert response.status_code == 200
        assert response.headers["content-disposition"] == f'attachment; filename="reconciliation-{PERIOD}.csv"'
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert list(rows[0]) == [
            "item_id",
            "reconciliation_id",
            "provider_id",
            "period",
            "kind",
            "request_id",
            "ledger_nano_usd",
            "provider_nano_usd",
            "reconciled_at",
        ]
        assert {row["period"] for row in rows} == {PERIOD}
        assert {(row["provider_id"], int(row["reconciliation_id"])) for row in rows} == {
            ("together", reconciled["second"]),
            ("fireworks-ai", reconciled["fireworks"]),
        }
        found = sorted(
            (
                int(row["reconciliation_id"]),
                row["kind"],
                row["request_id"].removeprefix("'"),
                _cell(row["ledger_nano_usd"]),
                _cell(row["provider_nano_usd"]),
            )
            for row in rows
        )
        assert found == _expected_rows(reconciled)
        assert "'=HYPERLINK(1)" in {row["request_id"] for row in rows}
        assert [int(row["item_id"]) for row in rows] == sorted(int(row["item_id"]) for row in rows)

    async def test_jsonl_and_parquet_carry_the_same_rows(
        self, client: httpx.AsyncClient, reconciled: dict[str, int]
    ) -> None:
        route = f"/v1/finance/exports/reconciliation?period={PERIOD}"
        lines = [
            orjson.loads(line)
            for line in (await client.get(f"{route}&format=jsonl", headers=FINANCE)).content.splitlines()
        ]
        parquet = (await client.get(f"{route}&format=parquet", headers=FINANCE)).content
        table = pq.read_table(io.BytesIO(parquet))
        assert table.to_pylist() == [
            {**line, "reconciled_at": datetime.fromisoformat(line["reconciled_at"])} for line in lines
        ]
        found = sorted(
            (
                line["reconciliation_id"],
                line["kind"],
                line["request_id"],
                line["ledger_nano_usd"],
                line["provider_nano_usd"],
            )
            for line in lines
        )
        assert found == _expected_rows(reconciled)

    async def test_the_servers_copy_and_the_row_path_write_the_same_bytes(
        self, db: Database, reconciled: dict[str, int]
    ) -> None:
        """On PostgreSQL the CSV comes from COPY, formatted by the server; it equals the Python writer's."""
        served = b"".join(
            [
                chunk
                async for chunk in export_service.stream_report(db, report="reconciliation", period=PERIOD, fmt="csv")
            ]
        )
        batches = export_repository.batches(db, report="reconciliation", period=PERIOD, batch_rows=2)
        written = b"".join([chunk async for chunk in WRITERS["csv"](REPORTS["reconciliation"].columns, batches)])
        assert served == written
        assert await export_service.count_rows(db, report="reconciliation", period=PERIOD) == 6

    async def test_the_command_writes_the_same_report(
        self, client: httpx.AsyncClient, settings: Settings, reconciled: dict[str, int], tmp_path: Path
    ) -> None:
        out = tmp_path / "reconciliation.csv"
        env = {
            "METERING_ENVIRONMENT": "embedded",
            "METERING_DATABASE_URL": settings.database_url,
            "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
            "METERING_SECRET_KEY": TEST_SECRET_KEY,
            "METERING_JWT_SECRET": TEST_JWT_SECRET,
            "METERING_DATA_DIR": str(tmp_path / "data"),
        }
        command = [sys.executable, "-m", "cli.main", "export", "reconciliation", "--period", PERIOD]
        command += ["--format", "csv", "--out", str(out), "--no-progress"]
        result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode()
        served = await client.get(f"/v1/finance/exports/reconciliation?period={PERIOD}&format=csv", headers=FINANCE)
        assert out.read_bytes() == served.content
        assert b"6 rows" in result.stderr


async def _million_lines(count: int) -> AsyncIterator[bytes]:
    """A statement of ``count`` lines, generated as it is sent, 5,000 lines a chunk: r-match and r-mismatch
    among ``m-0000000`` … lines the ledger does not know."""
    yield b"request_id,cost_nano_usd\n"
    yield b"r-match,1200000\nr-mismatch,1300000\n"
    for start in range(0, count - 2, 5_000):
        yield b"".join(b"m-%07d,%d\n" % (index, index % 1000) for index in range(start, min(start + 5_000, count - 2)))


class TestMillionLines:
    async def test_a_million_line_statement_streams_through(self, client: httpx.AsyncClient, db: Database) -> None:
        async with db.session_scope() as session:
            await create_account(session, "alice", plan="pro")
            await create_provider(session, "together")
            started_at = period_bounds(PERIOD)[0] + timedelta(days=10)
            ids = [
                (await store_usage(session, request_id=request_id, started_at=started_at)).id
                for request_id in ("r-match", "r-mismatch", "r-ledger-only")
            ]
        async with db.session_scope() as session:
            await settle(session, priced=[PricedRequest(i, cost) for i, cost in zip(ids, (1_200_000, 1_000_000, 5))])
        count = 1_000_000
        response = await upload(client, _million_lines(count))
        assert response.status_code == 201, response.text
        body = response.json()
        assert [body[key] for key in ("lines", "matched", "amount_mismatch_count", "only_provider_count")] == [
            count,
            1,
            1,
            count - 2,
        ]
        assert body["only_ledger"] == [{"request_id": "r-ledger-only", "ledger_nano_usd": 5}]
        assert body["provider_total_nano_usd"] == 2_500_000 + sum(index % 1000 for index in range(count - 2))
        assert body["ledger_total_nano_usd"] == 2_200_005
        assert body["only_provider"][0] == {"request_id": "m-0000000", "provider_nano_usd": 0}
        assert len(body["only_provider"]) == 100
        async with db.session_scope() as session:
            staged = await session.scalar(select(func.count()).select_from(ReconciliationLine))
            items = await session.scalar(select(func.count()).select_from(ReconciliationItem))
        assert (staged, items) == (0, count)
