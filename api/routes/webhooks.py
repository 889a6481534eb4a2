"""``POST /webhooks/stripe``: Stripe's payment events, trusted only with a valid signature over the raw body."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request

from api.deps import DatabaseDep, SettingsDep
from metering.invoicing.webhooks import verify_event, webhook_service

router = APIRouter(tags=["webhooks"])


@router.post("/webhooks/stripe", responses={400: {"description": "missing or invalid Stripe-Signature"}})
async def stripe_webhook(
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> dict:
    event = verify_event(await request.body(), stripe_signature, secret=settings.stripe_webhook_secret)
    async with db.session_scope() as session:
        outcome = await webhook_service.handle_event(session, event=event)
    return {"received": True, "event": event.id, "outcome": outcome}
