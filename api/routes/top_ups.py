"""Prepaid top-ups (SPEC §8): buy credit with a Stripe PaymentIntent, credited on its signed webhook.

The route takes no request session: ``metering.top_ups.service`` is an entry point with transactions of
its own, so no database connection is held while Stripe answers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path

from api.auth import PrincipalDep
from api.deps import DatabaseDep, SettingsDep
from api.schemas.accounts import NAME_PATTERN
from api.schemas.errors import BODY_TOO_LARGE, NO_PLATFORM_JWT, UNREADABLE_BODY, error_responses
from api.schemas.top_ups import TopUpCreate, TopUpRead
from metering.top_ups.service import MAX_IDEMPOTENCY_KEY, top_up_service

router = APIRouter(prefix="/v1", tags=["billing"])

AccountName = Annotated[str, Path(pattern=NAME_PATTERN, description="A user or org name.", examples=["acme"])]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key (per account) returns the same PaymentIntent.",
        examples=["9b0c6a4e-top-up-1"],
    ),
]


@router.post(
    "/accounts/{name}/billing/top-ups",
    response_model=TopUpRead,
    status_code=201,
    responses=error_responses(
        {
            400: UNREADABLE_BODY,
            401: NO_PLATFORM_JWT,
            403: "the caller knows the account but may not buy credits for it (the user, or an org admin, may)",
            404: "no such account, or one the caller may not know exists",
            409: "the Idempotency-Key was already used for a top-up of another amount",
            413: BODY_TOO_LARGE,
            422: "malformed name, body or Idempotency-Key; an amount that is not whole cents from $0.50 to $100,000",
            502: "Stripe refused the payment request",
            503: "Stripe is not configured or not reachable, or the database could not answer in time; ask again",
        }
    ),
    summary="Buy prepaid credits",
)
async def create_top_up(
    name: AccountName,
    body: TopUpCreate,
    principal: PrincipalDep,
    database: DatabaseDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> TopUpRead:
    """A Stripe PaymentIntent for the amount, to be paid with Stripe.js; the credit is spendable once Stripe
    reports the payment succeeded, after the period's plan credits and before pay-as-you-go. Free users may buy."""
    top_up = await top_up_service.create_top_up(
        database,
        settings=settings,
        principal=principal,
        account_name=name,
        amount_nano_usd=body.amount_nano_usd,
        idempotency_key=idempotency_key,
    )
    return TopUpRead(
        id=top_up.id, client_secret=top_up.client_secret, amount_nano_usd=top_up.amount_nano_usd, status="pending"
    )
