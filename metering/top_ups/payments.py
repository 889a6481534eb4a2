"""What Stripe's payment events mean for prepaid top-ups, applied in the webhook's transaction.

``metering.invoicing.webhooks`` verifies each event and stores it once by id, then calls:

- ``payment_succeeded`` (``payment_intent.succeeded``): the top-up becomes spendable credit, once per
  PaymentIntent (``credit_grant_service.credit_top_up``), whether or not the top-up call recorded it.
  The account is the PaymentIntent's ``metadata.account``, set when the top-up was created; a
  PaymentIntent without it (an invoice's payment, a charge made by hand) is not a top-up and is left
  alone. The amount credited is what Stripe received, ``amount_received`` × 10^7 nano-USD (``amount``
  when the payload has no ``amount_received``: top-ups are captured automatically, so the two agree);
  ``metadata.amount_nano_usd`` is only checked against it, and a disagreement is logged, since money
  that was paid is credited as paid.
- ``charge_refunded`` (``charge.refunded``): ``amount_refunded`` is cumulative, so the refund takes back
  what is left of the credit up to the part refunded since the last event
  (``credit_grant_service.take_back_refund``); what costs already spent stays spent.

Stripe does not deliver in order. A refund that arrives before the payment's success, for a top-up
that was recorded (or a charge carrying the top-up's metadata), first credits the payment, since only
a paid charge can be refunded, and then takes the refund back: the success that comes later finds the
PaymentIntent credited and does nothing. For a PaymentIntent that was never recorded and a charge
without that metadata the refund cannot be placed and is ignored; the later success then takes back
what its payload shows refunded (the charges embedded in it: ``latest_charge`` when expanded, or
``charges`` of API versions before 2022-11-15). A payload naming its charge by id only cannot show
it, and such a top-up stays credited in full: finance sees the refund in Stripe.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.credit_grants.repository import credit_grant_repository
from metering.credit_grants.service import MAX_AMOUNT_NANO_USD, credit_grant_service
from metering.invoicing.stripe_sync import CURRENCY
from metering.money import NANO_PER_CENT

log = logging.getLogger(__name__)

APPLIED = "applied"
IGNORED = "ignored"


class TopUpPayments:
    async def payment_succeeded(self, session: AsyncSession, *, intent: Mapping[str, Any]) -> str:
        """Credit the top-up paid by PaymentIntent ``intent`` (the event's object); ``applied`` or ``ignored``."""
        intent_id = _text(intent.get("id"))
        metadata = _metadata(intent)
        account_name = _text(metadata.get("account"))
        if intent_id is None or account_name is None or intent.get("invoice"):
            log.info(
                "payment %s is not a prepaid top-up (an invoice's, or no account in its metadata); ignored", intent_id
            )
            return IGNORED
        received = _cents(intent.get("amount_received"))
        if received is None:
            received = _cents(intent.get("amount"))
        amount = await self._creditable(
            session, intent_id, account_name, currency=intent.get("currency"), cents=received
        )
        if amount is None:
            return IGNORED
        _check_metadata_amount(intent_id, metadata, amount)
        await credit_grant_service.credit_top_up(
            session, account_name=account_name, payment_intent_id=intent_id, amount_nano_usd=amount
        )
        refunded = _refunded_cents(intent, intent_id)
        if refunded:
            await credit_grant_service.take_back_refund(
                session, payment_intent_id=intent_id, refunded_nano_usd=refunded * NANO_PER_CENT
            )
        return APPLIED

    async def charge_refunded(self, session: AsyncSession, *, charge: Mapping[str, Any]) -> str:
        """Take back what is left of the top-up whose charge ``charge`` was refunded; ``applied`` or ``ignored``."""
        intent_id = _text(charge.get("payment_intent"))
        refunded = _cents(charge.get("amount_refunded"))
        if intent_id is None or refunded is None:
            log.info("refunded charge %s names no PaymentIntent or refund; ignored", charge.get("id"))
            return IGNORED
        top_up = await credit_grant_repository.by_payment_intent(session, intent_id)
        metadata = _metadata(charge)
        account_name = top_up.account_name if top_up is not None else _text(metadata.get("account"))
        if account_name is None:
            log.info("refund of %s: not a known prepaid top-up; ignored", intent_id)
            return IGNORED
        if top_up is None or top_up.status == "pending":
            # Only a paid charge can be refunded: its success is known even if its event is still on its way.
            paid = _cents(charge["amount_captured"] if "amount_captured" in charge else charge.get("amount"))
            amount = await self._creditable(
                session, intent_id, account_name, currency=charge.get("currency"), cents=paid
            )
            if amount is None:
                return IGNORED
            await credit_grant_service.credit_top_up(
                session, account_name=account_name, payment_intent_id=intent_id, amount_nano_usd=amount
            )
        await credit_grant_service.take_back_refund(
            session, payment_intent_id=intent_id, refunded_nano_usd=refunded * NANO_PER_CENT
        )
        return APPLIED

    async def _creditable(
        self, session: AsyncSession, intent_id: str, account_name: str, *, currency: object, cents: int | None
    ) -> int | None:
        """The nano-USD to credit for ``cents`` paid, or None (logged) when it cannot be credited."""
        if currency != CURRENCY:
            log.error("top-up %s was paid in %r, not %s; not credited", intent_id, currency, CURRENCY)
            return None
        if not cents or cents * NANO_PER_CENT > MAX_AMOUNT_NANO_USD:
            log.error("top-up %s: %r cents cannot be credited", intent_id, cents)
            return None
        if await account_repository.get(session, account_name) is None:
            log.error("top-up %s was paid for %r, which is no account here; not credited", intent_id, account_name)
            return None
        return cents * NANO_PER_CENT


def _check_metadata_amount(intent_id: str, metadata: Mapping[str, Any], amount: int) -> None:
    asked = metadata.get("amount_nano_usd")
    if asked != str(amount):
        log.warning(
            "top-up %s asked for %r nano-USD but %s were paid; crediting what was paid", intent_id, asked, amount
        )


def _refunded_cents(intent: Mapping[str, Any], intent_id: str) -> int:
    """What the charges embedded in ``intent`` show refunded (0 when the payload names them by id only)."""
    charges: dict[str, int] = {}
    listed = intent.get("charges")
    embedded = listed.get("data") if isinstance(listed, Mapping) else None
    candidates = [*(embedded if isinstance(embedded, list) else []), intent.get("latest_charge")]
    for charge in candidates:
        if isinstance(charge, Mapping) and charge.get("payment_intent") in (None, intent_id):
            charge_id = _text(charge.get("id")) or ""
            charges[charge_id] = max(charges.get(charge_id, 0), _cents(charge.get("amount_refunded")) or 0)
    return sum(charges.values())


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _cents(value: object) -> int | None:
    """A count of cents from a Stripe payload: an int, never a bool, never negative."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


top_up_payments = TopUpPayments()
