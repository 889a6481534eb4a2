"""Stripe webhooks: signature check over the raw body, then each event applied at most once, in order.

Events are stored by id (a redelivery is a no-op). Stripe does not deliver in
order, so an event older (by Stripe's ``created``) than the latest one applied to
the same account is recorded as stale and changes nothing. An event that changes the account's
status writes ``account.delinquent`` or ``account.reinstated`` in the same transaction.

``payment_intent.succeeded`` and ``charge.refunded`` credit prepaid top-ups and take refunds back
(``metering.top_ups.payments``). Their order does not matter (a PaymentIntent is credited once, a
refund's amount is cumulative), so they are stored without an account: that column orders the
invoice events, and a payment event must never make an invoice event stale.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.events.service import NewEvent, event_service
from metering.events.types import ACCOUNT_DELINQUENT, ACCOUNT_REINSTATED
from metering.invoicing.errors import InvalidWebhookPayload, InvalidWebhookSignature, WebhookNotConfigured
from metering.invoicing.repository import invoicing_repository
from metering.models import Invoice
from metering.periods import current_period, utcnow
from metering.top_ups.payments import top_up_payments

log = logging.getLogger(__name__)

TOLERANCE_SECONDS = 300
PAID_TYPES = ("invoice.paid", "invoice.payment_succeeded")
FAILED_TYPES = ("invoice.payment_failed",)
TOP_UP_PAID = "payment_intent.succeeded"
TOP_UP_REFUNDED = "charge.refunded"


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    created: int
    data_object: dict[str, Any]


def verify_event(payload: bytes, signature: str | None, *, secret: str) -> WebhookEvent:
    """The event in ``payload`` if ``signature`` signs it with ``secret`` within the tolerance."""
    if not secret:
        raise WebhookNotConfigured("STRIPE_WEBHOOK_SECRET is not set; webhooks cannot be verified")
    if not signature:
        raise InvalidWebhookSignature("missing Stripe-Signature header")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature, secret, TOLERANCE_SECONDS)
    except (UnicodeDecodeError, stripe.SignatureVerificationError, ValueError, IndexError) as exc:
        raise InvalidWebhookSignature(f"invalid Stripe-Signature: {exc}") from exc
    try:
        body = json.loads(text)
        event = WebhookEvent(
            id=str(body["id"]),
            type=str(body["type"]),
            created=int(body["created"]),
            data_object=_object_of(body),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidWebhookPayload(f"not a Stripe event: {exc}") from exc
    if isinstance(body["created"], bool):
        raise InvalidWebhookPayload("not a Stripe event: created is not a timestamp")
    return event


class WebhookService:
    async def handle_event(self, session: AsyncSession, *, event: WebhookEvent) -> str:
        """Apply a verified event; returns ``applied``, ``stale``, ``ignored`` or ``duplicate``."""
        if event.type in (TOP_UP_PAID, TOP_UP_REFUNDED):
            return await self._handle_top_up_event(session, event=event)
        if event.type not in PAID_TYPES + FAILED_TYPES:
            stored = await self._store(session, event, account=None, outcome="ignored")
            return "ignored" if stored else "duplicate"
        obj = event.data_object
        stripe_invoice_id = obj.get("id") if isinstance(obj.get("id"), str) else None
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        local_id = _int_or_none(metadata.get("invoice_id"))
        invoice = await invoicing_repository.invoice_for_stripe(
            session, stripe_invoice_id=stripe_invoice_id, local_id=local_id
        )
        account_name = invoice.account_name if invoice is not None else None
        if account_name is None and isinstance(obj.get("customer"), str):
            account_name = await invoicing_repository.account_by_customer(session, obj["customer"])
        account = await account_repository.lock(session, account_name) if account_name else None
        if account is None:
            stored = await self._store(session, event, account=None, outcome="ignored")
            log.warning("stripe event %s (%s) names no known account", event.id, event.type)
            return "ignored" if stored else "duplicate"

        # The account row is locked: events of one account are decided one at a time.
        if not await self._store(session, event, account=account.name, outcome="applied", invoice_id=stripe_invoice_id):
            return "duplicate"
        latest = await invoicing_repository.latest_applied_created(session, account=account.name, excluding=event.id)
        if latest is not None and event.created < latest:
            await invoicing_repository.set_event_outcome(session, event.id, "stale")
            return "stale"

        now = utcnow()
        status_before = account.status
        if event.type in FAILED_TYPES:
            account.status = "delinquent"
            new_invoice_status = "payment_failed"
        else:
            still_failed = await invoicing_repository.has_failed_invoice(
                session, account=account.name, excluding=invoice.id if invoice is not None else None
            )
            account.status = "delinquent" if still_failed else "active"
            new_invoice_status = "paid"
        account.updated_at = now
        if invoice is not None:
            invoice.status = new_invoice_status
            invoice.stripe_event_created = event.created
            invoice.stripe_invoice_id = invoice.stripe_invoice_id or stripe_invoice_id
            invoice.updated_at = now
        await session.flush()
        if account.status != status_before:
            await self._emit_status_change(
                session, event=event, account=account.name, status=account.status, invoice=invoice
            )
        return "applied"

    async def _handle_top_up_event(self, session: AsyncSession, *, event: WebhookEvent) -> str:
        """A top-up's payment or refund: ``applied``, ``ignored`` (not a top-up we can place) or ``duplicate``."""
        if not await self._store(session, event, account=None, outcome="applied"):
            return "duplicate"
        if event.type == TOP_UP_PAID:
            outcome = await top_up_payments.payment_succeeded(session, intent=event.data_object)
        else:
            outcome = await top_up_payments.charge_refunded(session, charge=event.data_object)
        if outcome != "applied":
            await invoicing_repository.set_event_outcome(session, event.id, outcome)
        return outcome

    async def _emit_status_change(
        self, session: AsyncSession, *, event: WebhookEvent, account: str, status: str, invoice: Invoice | None
    ) -> None:
        """``account.delinquent`` or ``account.reinstated``, caused by this Stripe event (stored once by id)."""
        kind = ACCOUNT_DELINQUENT if status == "delinquent" else ACCOUNT_REINSTATED
        data = {
            "invoice_id": invoice.id if invoice is not None else None,
            "stripe_invoice_id": invoice.stripe_invoice_id if invoice is not None else None,
            "stripe_event_id": event.id,
        }
        period = invoice.period if invoice is not None else current_period()
        await event_service.emit(session, [NewEvent(kind, account, period, f"{kind}:{event.id}", data)])

    async def _store(
        self,
        session: AsyncSession,
        event: WebhookEvent,
        *,
        account: str | None,
        outcome: str,
        invoice_id: str | None = None,
    ) -> bool:
        return await invoicing_repository.insert_event(
            session,
            {
                "id": event.id,
                "type": event.type[:128],
                "event_created": event.created,
                "account_name": account,
                "stripe_invoice_id": invoice_id,
                "outcome": outcome,
                "received_at": utcnow(),
            },
        )


def _object_of(body: dict[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def _int_or_none(value: Any) -> int | None:  # any JSON value
    try:
        number = int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and 0 < number < 2**63 else None


webhook_service = WebhookService()
