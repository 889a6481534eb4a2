"""The adjustments' line in Stripe (against a real localstripe): one invoice item, negative for a credit, never twice."""

from __future__ import annotations

from sqlalchemy import select

from metering.config import Settings
from metering.db import Database
from metering.invoicing.stripe_sync import stripe_sync
from metering.ledger.verify import verify
from metering.models import InvoiceLine
from tests.metering.adjustments.helpers import SEPT, USD, adjust, close
from tests.metering.invoicing.helpers import charge, invoices
from tests.support import localstripe


async def closed_world(db: Database) -> None:
    """alice: together 123 cents, adjustments -50 cents; erin: adjustments only, 100 cents."""
    await charge(db, account="alice", started_at=SEPT, costs={"a1": 1_234_567_891})
    await adjust(db, "alice", -USD // 2, "2026-09")
    await adjust(db, "erin", USD, "2026-09")
    await close(db, "2026-09")


def stripe_items(settings: Settings) -> list[dict]:
    return localstripe.list_all(settings.stripe_api_base, "invoiceitems")


class TestSyncAdjustments:
    async def test_each_adjustments_line_is_one_invoice_item_negative_for_a_credit(
        self, seeded: Database, stripe_settings: Settings
    ) -> None:
        await closed_world(seeded)

        result = await stripe_sync.sync_invoices(seeded)

        assert (result.items_created, result.customers_created, result.invoices_sent) == (3, 2, 2)
        items = stripe_items(stripe_settings)
        by_line = {item["metadata"]["line_id"]: item for item in items}
        assert len(by_line) == len(items) == 3
        async with seeded.session_scope() as session:
            lines = {line.id: line for line in await session.scalars(select(InvoiceLine))}
        assert {
            (item["metadata"]["account"], item["amount"], item["currency"], item["description"]) for item in items
        } == {
            ("alice", 123, "usd", "together: 1 requests, 2026-09"),
            ("alice", -50, "usd", "adjustments, 2026-09"),
            ("erin", 100, "usd", "adjustments, 2026-09"),
        }
        for line_id, line in lines.items():
            item = by_line[str(line_id)]
            assert (item["amount"], line.stripe_status, line.stripe_invoice_item_id) == (
                line.amount_cents,
                "sent",
                item["id"],
            )
        found = await invoices(seeded)
        assert {key: invoice.status for key, invoice in found.items()} == {
            ("alice", "2026-09"): "sent",
            ("erin", "2026-09"): "sent",
        }
        assert (await verify(seeded)).ok

    async def test_rerun_sends_nothing_twice(self, seeded: Database, stripe_settings: Settings) -> None:
        await closed_world(seeded)
        await stripe_sync.sync_invoices(seeded)

        again = await stripe_sync.sync_invoices(seeded)

        assert (again.items_created, again.customers_created) == (0, 0)
        assert sorted(item["amount"] for item in stripe_items(stripe_settings)) == [-50, 100, 123]
