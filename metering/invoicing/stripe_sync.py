"""Pushing closed invoices to Stripe without ever duplicating a line.

Per line the state moves pending → sent (with the Stripe invoice item id). Stripe
calls are made outside any database transaction; each result is written in its own
short one. A crash between Stripe accepting a call and the local write is healed on
the next run: before creating anything, the customer's objects are listed and matched
by metadata (``account``, ``line_id``, ``invoice_id``), and every create carries an
idempotency key as well.

A multi-transaction entry point: no transaction may stay open across a Stripe call, so each
result is committed in its own, and the run's advisory lock on a connection of its own.

``METERING_TEST_PAUSE_AT=<step>`` stops the process at one named step (see
``pause_point``) so tests can kill it exactly there.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import stripe

from metering.config import Settings, get_settings
from metering.db import Database
from metering.invoicing.repository import invoicing_repository
from metering.periods import utcnow

log = logging.getLogger(__name__)

PAUSE_ENV = "METERING_TEST_PAUSE_AT"
CURRENCY = "usd"
BATCH = 500


def pause_point(step: str) -> None:
    """Test hook: when ``METERING_TEST_PAUSE_AT`` names this step, announce it on stderr and hang."""
    if os.environ.get(PAUSE_ENV) == step:
        sys.stderr.write(f"PAUSED AT {step}\n")
        sys.stderr.flush()
        while True:
            time.sleep(3600)


@dataclass
class LineWork:
    id: int
    provider_id: str | None
    requests_count: int
    amount_cents: int
    stripe_status: str


@dataclass
class InvoiceWork:
    id: int
    account: str
    period: str
    status: str
    customer_id: str | None
    stripe_invoice_id: str | None
    lines: list[LineWork] = field(default_factory=list)


@dataclass
class SyncResult:
    skipped_reason: str | None = None
    customers_created: int = 0
    items_created: int = 0
    items_recovered: int = 0
    invoices_sent: int = 0
    invoices_finalized: int = 0
    failures: dict[int, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.skipped_reason:
            return f"stripe sync skipped: {self.skipped_reason}"
        text = (
            f"stripe sync: {self.items_created} invoice items created, {self.items_recovered} recovered, "
            f"{self.customers_created} customers created, {self.invoices_sent} invoices fully sent, "
            f"{self.invoices_finalized} finalized"
        )
        if self.failures:
            text += f"; {len(self.failures)} invoices not finished: " + "; ".join(
                f"#{id_}: {why}" for id_, why in sorted(self.failures.items())
            )
        return text


def stripe_client(settings: Settings) -> stripe.StripeClient:
    """One client per run, on httpx's async transport; ``STRIPE_API_BASE`` points it at a test server."""
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        http_client=stripe.HTTPXClient(),
        max_network_retries=2,
    )


class StripeSync:
    async def sync_invoices(self, database: Database, *, settings: Settings | None = None) -> SyncResult:
        """Send every pending invoice line to Stripe, then create and finalize each Stripe invoice."""
        settings = settings or get_settings()
        if not settings.stripe_api_key:
            return SyncResult(skipped_reason="STRIPE_API_KEY is not set")
        async with database.engine.connect() as lock_connection:
            locked = await invoicing_repository.try_sync_run_lock(database, lock_connection)
            await lock_connection.commit()  # the lock outlives the transaction; no snapshot is held meanwhile
            if not locked:
                return SyncResult(skipped_reason="another sync-stripe run is in progress")
            try:
                return await self._sync(database, stripe_client(settings))
            finally:
                await invoicing_repository.release_sync_run_lock(database, lock_connection)
                await lock_connection.commit()

    async def _sync(self, database: Database, client: stripe.StripeClient) -> SyncResult:
        """Two runs at once could both miss a line in their listing and both create it: callers serialize."""
        result = SyncResult()
        customers: dict[str, str] | None = None
        after_id = 0
        while True:
            work = await self._load(database, after_id=after_id)
            if not work:
                return result
            after_id = work[-1].id
            for invoice in work:
                try:
                    if invoice.customer_id is None:
                        if customers is None:
                            customers = await self._customers_by_account(client)
                        invoice.customer_id = await self._ensure_customer(
                            database, client, invoice.account, customers, result
                        )
                    await self._send_lines(database, client, invoice, result)
                    await self._finish_invoice(database, client, invoice, result)
                except stripe.StripeError as exc:
                    reason = f"{type(exc).__name__}: {exc.user_message or exc}"[:500]
                    result.failures[invoice.id] = reason
                    async with database.session_scope() as session:
                        await invoicing_repository.update_invoice(
                            session, invoice.id, now=utcnow(), stripe_error=reason
                        )
                    log.warning("stripe sync of invoice %s stopped: %s", invoice.id, reason)

    async def _load(self, database: Database, *, after_id: int) -> list[InvoiceWork]:
        async with database.session_scope() as session:
            rows = await invoicing_repository.invoices_to_sync(session, after_id=after_id, limit=BATCH)
            lines = await invoicing_repository.lines_of(session, [invoice.id for invoice, _ in rows])
            return [
                InvoiceWork(
                    id=invoice.id,
                    account=invoice.account_name,
                    period=invoice.period,
                    status=invoice.status,
                    customer_id=customer,
                    stripe_invoice_id=invoice.stripe_invoice_id,
                    lines=[
                        LineWork(line.id, line.provider_id, line.requests_count, line.amount_cents, line.stripe_status)
                        for line in lines[invoice.id]
                    ],
                )
                for invoice, customer in rows
            ]

    async def _customers_by_account(self, client: stripe.StripeClient) -> dict[str, str]:
        """Customers already in Stripe by their ``account`` metadata (the oldest wins)."""
        found: dict[str, str] = {}
        page = await client.v1.customers.list_async(params={"limit": 100})
        async for customer in page.auto_paging_iter():
            account = _metadata(customer).get("account")
            if account and account not in found:
                found[account] = customer.id
        return found

    async def _ensure_customer(
        self, database: Database, client: stripe.StripeClient, account: str, known: dict[str, str], result: SyncResult
    ) -> str:
        customer_id = known.get(account)
        if customer_id is None:
            customer = await client.v1.customers.create_async(
                params={"name": account, "metadata": {"account": account}},
                options={"idempotency_key": f"customer-{account}"},
            )
            customer_id = known[account] = customer.id
            result.customers_created += 1
            pause_point("after_customer_create")
        async with database.session_scope() as session:
            await invoicing_repository.set_stripe_customer(
                session, account=account, customer_id=customer_id, now=utcnow()
            )
        return customer_id

    async def _send_lines(
        self, database: Database, client: stripe.StripeClient, invoice: InvoiceWork, result: SyncResult
    ) -> None:
        pending = [line for line in invoice.lines if line.stripe_status == "pending"]
        if pending:
            existing = await self._items_by_line(client, _customer_of(invoice))
            for line in pending:
                item_id = existing.get(str(line.id))
                if item_id is None:
                    item = await client.v1.invoice_items.create_async(
                        params={
                            "customer": _customer_of(invoice),
                            "amount": line.amount_cents,
                            "currency": CURRENCY,
                            "description": _describe(invoice, line),
                            "metadata": {
                                "line_id": str(line.id),
                                "invoice_id": str(invoice.id),
                                "account": invoice.account,
                                "period": invoice.period,
                                "provider": line.provider_id or "",
                            },
                        },
                        options={"idempotency_key": f"line-{line.id}"},
                    )
                    item_id = item.id
                    result.items_created += 1
                    pause_point("after_stripe_create")
                else:
                    result.items_recovered += 1
                async with database.session_scope() as session:
                    await invoicing_repository.mark_line_sent(session, line_id=line.id, item_id=item_id, now=utcnow())
                line.stripe_status = "sent"
                pause_point("after_line_write")
        if invoice.status == "pending":
            async with database.session_scope() as session:
                await invoicing_repository.update_invoice(
                    session, invoice.id, now=utcnow(), from_status="pending", status="sent"
                )
            invoice.status = "sent"
            result.invoices_sent += 1

    async def _items_by_line(self, client: stripe.StripeClient, customer_id: str) -> dict[str, str]:
        found: dict[str, str] = {}
        page = await client.v1.invoice_items.list_async(params={"customer": customer_id, "limit": 100})
        async for item in page.auto_paging_iter():
            line_id = _metadata(item).get("line_id")
            if line_id:
                found.setdefault(line_id, item.id)
        return found

    async def _finish_invoice(
        self, database: Database, client: stripe.StripeClient, invoice: InvoiceWork, result: SyncResult
    ) -> None:
        """Create the Stripe invoice from the customer's pending items and finalize it."""
        stripe_id = invoice.stripe_invoice_id or await self._find_invoice(client, invoice)
        if stripe_id is not None:
            status = (await client.v1.invoices.retrieve_async(stripe_id)).status
        else:
            created = await client.v1.invoices.create_async(
                params={
                    "customer": _customer_of(invoice),
                    "pending_invoice_items_behavior": "include",
                    "description": f"Inference usage {invoice.period}",
                    "metadata": {"invoice_id": str(invoice.id), "account": invoice.account, "period": invoice.period},
                },
                options={"idempotency_key": f"invoice-{invoice.id}"},
            )
            stripe_id, status = created.id, created.status
            pause_point("after_invoice_create")
        async with database.session_scope() as session:
            await invoicing_repository.update_invoice(session, invoice.id, now=utcnow(), stripe_invoice_id=stripe_id)
        if status == "draft":
            await client.v1.invoices.finalize_invoice_async(
                stripe_id, options={"idempotency_key": f"finalize-{invoice.id}"}
            )
        # A Stripe invoice already past draft was finalized by an earlier run; webhooks bring its payment.
        async with database.session_scope() as session:
            await invoicing_repository.update_invoice(session, invoice.id, now=utcnow(), stripe_error=None)
            await invoicing_repository.update_invoice(
                session, invoice.id, now=utcnow(), from_status="sent", status="open"
            )
        result.invoices_finalized += 1

    async def _find_invoice(self, client: stripe.StripeClient, invoice: InvoiceWork) -> str | None:
        page = await client.v1.invoices.list_async(params={"customer": _customer_of(invoice), "limit": 100})
        async for found in page.auto_paging_iter():
            if _metadata(found).get("invoice_id") == str(invoice.id):
                return found.id
        return None


def _customer_of(invoice: InvoiceWork) -> str:
    """The invoice's Stripe customer, which ``_sync`` ensures before it sends lines or the invoice."""
    if invoice.customer_id is None:
        raise RuntimeError(f"invoice {invoice.id} has no Stripe customer yet")
    return invoice.customer_id


def _metadata(obj: stripe.StripeObject) -> dict[str, Any]:
    metadata = obj["metadata"] if "metadata" in obj else None  # noqa: SIM401 - StripeObject has no .get()
    return metadata.to_dict() if metadata else {}


def _describe(invoice: InvoiceWork, line: LineWork) -> str:
    if line.provider_id is None:  # the adjustments' line; a negative amount is a credit item
        return f"adjustments, {invoice.period}"
    return f"{line.provider_id}: {line.requests_count} requests, {invoice.period}"


stripe_sync = StripeSync()
