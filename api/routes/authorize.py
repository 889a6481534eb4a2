"""``POST /internal/v1/authorize``: the router asks before forwarding a request (hot path)."""

from __future__ import annotations

import asyncio
import weakref

from fastapi import APIRouter, Request

from api.deps import ServiceAuth
from api.responses import OrjsonResponse
from api.schemas.authorize import AuthorizeCreate, AuthorizeRead
from api.schemas.errors import BODY_TOO_LARGE, NO_SERVICE_TOKEN, UNREADABLE_BODY, error_responses
from metering.authorize.service import AuthorizeRequest, authorize_service
from metering.db import Database

router = APIRouter(prefix="/internal/v1", tags=["internal"], dependencies=[ServiceAuth])

# Decisions in flight per database, at most the pool's steady size: beyond it, the pool
# would open and close an overflow connection per request (a PostgreSQL backend each),
# which costs far more than waiting here for a pooled one.
_slots: weakref.WeakKeyDictionary[Database, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _slots_of(db: Database) -> asyncio.Semaphore:
    slots = _slots.get(db)
    if slots is None:
        size = getattr(db.engine.pool, "size", lambda: 10)()
        slots = _slots[db] = asyncio.Semaphore(max(1, size))
    return slots


@router.post(
    "/authorize",
    response_model=AuthorizeRead,
    summary="Decide whether a request may go ahead, and who pays",
    responses=error_responses(
        {400: UNREADABLE_BODY, 401: NO_SERVICE_TOKEN, 413: BODY_TOO_LARGE, 422: "malformed body"}
    ),
)
async def authorize(body: AuthorizeCreate, http_request: Request) -> OrjsonResponse:
    """Always 200 for a well-formed request; ``allowed`` and ``reason`` carry the decision."""
    db: Database = http_request.app.state.database  # read directly: each dependency costs the hot path
    request = AuthorizeRequest(
        user=body.user, bill_to=body.bill_to, provider=body.provider, model=body.model, custom_key=body.custom_key
    )
    async with _slots_of(db):
        decision = await authorize_service.authorize(db, request=request)
    # Built by hand rather than through the response model: this is the hot path.
    return OrjsonResponse(
        {
            "allowed": decision.allowed,
            "billing_account": decision.billing_account,
            "providers": decision.providers,
            "reason": decision.reason,
            "hold_id": decision.hold_id,
            "credits_remaining_nano_usd": decision.credits_remaining_nano_usd,
            "spending_limit_remaining_nano_usd": decision.spending_limit_remaining_nano_usd,
        }
    )
