"""``POST /internal/v1/authorize``: the router asks before forwarding a request (hot path).

An entry point with a transaction of its own, not the request's session: each decision is
one (``metering.authorize.service``; on PostgreSQL one statement on driver connections), and
the fast lane (``api.fast_lane``) answers most requests before FastAPI's dependencies run at all.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from api.deps import ServiceAuth
from api.schemas.authorize import AuthorizeCreate, AuthorizeRead
from api.schemas.errors import BODY_TOO_LARGE, NO_SERVICE_TOKEN, UNREADABLE_BODY, error_responses
from metering.authorize.service import AuthorizeRequest, Decision, authorize_service
from metering.db import Database, statement_timeout_of

AUTHORIZE_PATH = "/internal/v1/authorize"


async def decide(db: Database, body: AuthorizeCreate) -> bytes:
    """The decision as the ``AuthorizeRead`` body: the route's and the fast lane's one path to it."""
    return encode_decision(await decision_for(db, body))


async def decision_for(db: Database, body: AuthorizeCreate) -> Decision:
    """The decision on ``body``, however it was sent (a JSON body, a proxy's subrequest headers)."""
    request = AuthorizeRequest(
        user=body.user, bill_to=body.bill_to, provider=body.provider, model=body.model, custom_key=body.custom_key
    )
    try:
        return await authorize_service.authorize(db, request=request)
    except Exception as error:
        # The one-statement decision runs on driver connections, below ``session_scope``, which
        # translates a cancelled statement itself: here it becomes the same refusal (503).
        timeout = statement_timeout_of(error)
        if timeout is None:
            raise
        raise timeout from error


def encode_decision(decision: Decision) -> bytes:
    """The ``AuthorizeRead`` body, built by hand rather than through the response model (hot path)."""
    return orjson.dumps(
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


router = APIRouter(prefix="/internal/v1", tags=["internal"], dependencies=[ServiceAuth])


@router.post(
    "/authorize",
    response_model=AuthorizeRead,
    summary="Decide whether a request may go ahead, and who pays",
    responses=error_responses(
        {
            400: UNREADABLE_BODY,
            401: NO_SERVICE_TOKEN,
            413: BODY_TOO_LARGE,
            422: "malformed body",
            503: "the database could not be reached or answer in time; ask again",
        }
    ),
)
async def authorize(body: AuthorizeCreate, http_request: Request) -> Response:
    """Always 200 for a well-formed request; ``allowed`` and ``reason`` carry the decision."""
    payload = await decide(http_request.app.state.database, body)
    return Response(payload, media_type="application/json")
