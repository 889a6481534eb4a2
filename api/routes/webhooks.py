"""``POST /webhooks/stripe``: Stripe's payment events, trusted only with a valid signature over the raw body."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request

from api.deps import SessionDep, SettingsDep
from api.schemas.errors import BODY_TOO_LARGE, error_responses
from metering.invoicing.webhooks import verify_event, webhook_service

router = APIRouter(tags=["webhooks"])


@router.post(
    "/webhooks/stripe",
    summary="Stripe payment events",
    responses=error_responses(
        {
            400: "missing or invalid Stripe-Signature, or a body that is not a Stripe event",
            413: BODY_TOO_LARGE,
            422: "malformed header",
            503: "STRIPE_WEBHOOK_SECRET is not set, so no event can be verified",
        }
    ),
    # The body is read raw (the signature covers its exact bytes), so it is declared by hand.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "description": "A Stripe event, signed in Stripe-Signature."},
                    "example": {
                        "id": "evt_1QxYz",
                        "type": "invoice.payment_failed",
                        "created": 1764547200,
                        "data": {"object": {"id": "in_1QxYz", "customer": "cus_Ab12"}},
                    },
                }
            },
        }
    },
)
async def stripe_webhook(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> dict:
    """``invoice.payment_failed`` makes the account delinquent, ``invoice.paid`` clears it; replays are no-ops."""
    event = verify_event(await request.body(), stripe_signature, secret=settings.stripe_webhook_secret)
    outcome = await webhook_service.handle_event(session, event=event)
    return {"received": True, "event": event.id, "outcome": outcome}
