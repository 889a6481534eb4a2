"""Buying prepaid credits: a Stripe PaymentIntent for the amount, recorded as a pending top-up.

An entry point with transactions of its own, so that no database connection is held while Stripe
answers (up to its timeout and retries):

1. one short transaction authorizes the caller and reads the account's Stripe customer;
2. with no transaction open, the customer is created when missing and the PaymentIntent is created,
   carrying ``{"account", "amount_nano_usd"}`` in its metadata;
3. a second short transaction stores the customer and records the pending top-up
   (``credit_grant_service.record_top_up``).

Nothing is lost if step 3 never happens (the process dies, the database refuses): the client got no
``client_secret``, so it cannot pay this PaymentIntent, and it may retry with the same
Idempotency-Key, which gets the same PaymentIntent back from Stripe and records it then. Should the
PaymentIntent be paid anyway, ``payment_intent.succeeded`` credits a PaymentIntent that was never
recorded from its metadata (``metering.top_ups.payments``); and a webhook that beats step 3 leaves
``record_top_up`` nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import stripe

from metering.auth.policy import Action, access_policy
from metering.auth.tokens import Principal
from metering.config import Settings
from metering.credit_grants.service import credit_grant_service
from metering.db import Database
from metering.invoicing.repository import invoicing_repository
from metering.invoicing.stripe_sync import CURRENCY
from metering.money import NANO_PER_CENT
from metering.periods import utcnow
from metering.top_ups.errors import (
    InvalidTopUp,
    StripeRefused,
    StripeUnavailable,
    TopUpKeyReused,
    TopUpsNotConfigured,
)

log = logging.getLogger(__name__)

# Stripe's smallest card charge in USD is 50 cents; the largest top-up is a bound of ours.
MIN_TOP_UP_NANO_USD = 50 * NANO_PER_CENT
MAX_TOP_UP_NANO_USD = 100_000 * 100 * NANO_PER_CENT
# Stripe keeps idempotency keys of up to 255 characters: room for the prefix and a 96-character account name.
MAX_IDEMPOTENCY_KEY = 128
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class TopUp:
    """A PaymentIntent to pay with Stripe.js (``client_secret``); credited when Stripe says it succeeded."""

    id: str
    client_secret: str
    amount_nano_usd: int
    status: str


def top_up_cents(amount_nano_usd: int) -> int:
    """The whole cents ``amount_nano_usd`` is, within the bounds of one top-up."""
    cents, sub_cent = divmod(amount_nano_usd, NANO_PER_CENT)
    if sub_cent:
        raise InvalidTopUp(f"amount_nano_usd must be a whole number of cents (a multiple of {NANO_PER_CENT})")
    if not MIN_TOP_UP_NANO_USD <= amount_nano_usd <= MAX_TOP_UP_NANO_USD:
        raise InvalidTopUp(
            f"amount_nano_usd must be from {MIN_TOP_UP_NANO_USD} ($0.50) to {MAX_TOP_UP_NANO_USD} ($100,000)"
        )
    return cents


def new_http_client() -> stripe.HTTPClient:
    """The HTTP client of one top-up's Stripe calls (httpx's async transport, as ``stripe_sync`` uses)."""
    return stripe.HTTPXClient()


@asynccontextmanager
async def _stripe(settings: Settings) -> AsyncIterator[stripe.StripeClient]:
    """A Stripe client configured as ``stripe_sync.stripe_client`` makes it, on an HTTP client this
    call owns and closes: top-ups are rare and come one request at a time, so no pool is kept."""
    http_client = new_http_client()
    try:
        yield stripe.StripeClient(
            settings.stripe_api_key,
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
            http_client=http_client,
            max_network_retries=2,
        )
    finally:
        await http_client.close_async()  # type: ignore[no-untyped-call]  # unannotated in the stripe library


def _one_line(exc: stripe.StripeError) -> str:
    message = exc.user_message or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:300]


def _translated(exc: stripe.StripeError) -> Exception:
    """A Stripe failure as the error the caller gets: retry later (503), a reused key (409), or refused (502)."""
    status = exc.http_status or 0
    if isinstance(exc, stripe.IdempotencyError):
        return TopUpKeyReused(f"this Idempotency-Key was already used for another top-up: {_one_line(exc)}")
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or status >= 500:
        return StripeUnavailable(f"Stripe is unavailable ({type(exc).__name__}): {_one_line(exc)}")
    return StripeRefused(f"Stripe refused the payment request ({type(exc).__name__}): {_one_line(exc)}")


class TopUpService:
    async def create_top_up(
        self,
        database: Database,
        *,
        settings: Settings,
        principal: Principal,
        account_name: str,
        amount_nano_usd: int,
        idempotency_key: str | None = None,
    ) -> TopUp:
        """A PaymentIntent for ``amount_nano_usd`` of prepaid credit for ``account_name`` (the user, or an
        org admin), recorded as a pending top-up. ``idempotency_key`` (the client's, per account): the
        same key gets the same PaymentIntent back."""
        cents = top_up_cents(amount_nano_usd)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidTopUp(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        async with database.session_scope() as session:
            account = await access_policy.authorize_account(
                session, principal=principal, account_name=account_name, action=Action.BUY_PREPAID_CREDITS
            )
            customer_id = account.stripe_customer_id
        if not settings.stripe_api_key:
            raise TopUpsNotConfigured("prepaid top-ups are not available: STRIPE_API_KEY is not set")

        new_customer = customer_id is None
        try:
            async with _stripe(settings) as client:
                if customer_id is None:
                    customer_id = await self._create_customer(client, account_name)
                intent = await client.v1.payment_intents.create_async(
                    params={
                        "amount": cents,
                        "currency": CURRENCY,
                        "customer": customer_id,
                        "metadata": {"account": account_name, "amount_nano_usd": str(amount_nano_usd)},
                    },
                    # Without a key of the client's the library makes one per call, so its own retries are safe.
                    options={"idempotency_key": f"top-up:{account_name}:{idempotency_key}"} if idempotency_key else {},
                )
        except stripe.StripeError as exc:
            error = _translated(exc)
            log.warning("top-up of %s for %s failed: %s", amount_nano_usd, account_name, error)
            raise error from exc
        if not intent.client_secret:
            raise StripeRefused(f"Stripe returned PaymentIntent {intent.id} without a client_secret")

        async with database.session_scope() as session:
            if new_customer:
                await invoicing_repository.set_stripe_customer(
                    session, account=account_name, customer_id=customer_id, now=utcnow()
                )
            await credit_grant_service.record_top_up(
                session,
                account_name=account_name,
                payment_intent_id=intent.id,
                amount_nano_usd=amount_nano_usd,
                actor=principal.user,
            )
        return TopUp(intent.id, intent.client_secret, amount_nano_usd, PENDING)

    async def _create_customer(self, client: stripe.StripeClient, account_name: str) -> str:
        """The account's Stripe customer, made as ``stripe_sync`` makes it (same parameters and idempotency key,
        so whichever of the two asks first, Stripe keeps one customer; the sync finds it by its metadata)."""
        customer = await client.v1.customers.create_async(
            params={"name": account_name, "metadata": {"account": account_name}},
            options={"idempotency_key": f"customer-{account_name}"},
        )
        return customer.id


top_up_service = TopUpService()
