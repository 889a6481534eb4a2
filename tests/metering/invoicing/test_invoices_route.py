"""``GET /v1/accounts/{name}/invoices``: invoices with their status and lines, to the account only."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from metering.db import Database
from metering.invoicing.service import invoicing_service
from tests.factories.billing_data import as_user
from tests.metering.invoicing.helpers import charge

SEPT = datetime(2026, 9, 10, 12, tzinfo=UTC)


async def close(db: Database, period: str) -> None:
    async with db.session_scope() as session:
        await invoicing_service.close_period(session, period=period, force=True, now=datetime(2026, 11, 5, tzinfo=UTC))


class TestListInvoices:
    async def test_lists_invoices_newest_first_with_lines(self, client: httpx.AsyncClient, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 1_234_567_890, "a2": 10_000_000})
        await charge(seeded, account="alice", started_at=SEPT, costs={"a3": 35_432_109}, provider="fireworks-ai")
        await charge(seeded, account="alice", started_at=datetime(2026, 10, 2, tzinfo=UTC), costs={"a4": 20_000_000})
        await close(seeded, "2026-09")
        await close(seeded, "2026-10")

        response = await client.get("/v1/accounts/alice/invoices", headers=as_user("alice"))

        assert response.status_code == 200
        october, september = response.json()["items"]
        assert (october["period"], october["status"], october["amount_cents"]) == ("2026-10", "pending", 2)
        assert (october["carried_in_nano_usd"], october["carried_out_nano_usd"]) == (9_999_999, 9_999_999)
        assert september["payg_nano_usd"] == 1_279_999_999
        assert (september["amount_cents"], september["currency"], september["stripe_invoice_id"]) == (127, "usd", None)
        assert [
            (line["provider"], line["requests"], line["amount_nano_usd"], line["amount_cents"])
            for line in september["lines"]
        ] == [
            ("fireworks-ai", 1, 35_432_109, 3),
            ("together", 2, 1_244_567_890, 124),
        ]

    async def test_finance_reads_them_and_others_do_not(self, client: httpx.AsyncClient, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 50_000_000})
        await close(seeded, "2026-09")

        finance = await client.get("/v1/accounts/alice/invoices", headers=as_user("fiona", "finance"))
        stranger = await client.get("/v1/accounts/alice/invoices", headers=as_user("erin"))

        assert [item["amount_cents"] for item in finance.json()["items"]] == [5]
        assert (stranger.status_code, stranger.json()["error"]) == (404, "AccountNotFound")
        assert "amount_cents" not in stranger.text
