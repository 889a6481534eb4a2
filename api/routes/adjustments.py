"""Adjustments: finance corrects an account's bill, invoiced with the next invoice made (SPEC §8)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response

from api.auth import PrincipalDep
from api.deps import SessionDep
from api.schemas.accounts import NAME_PATTERN
from api.schemas.adjustments import AdjustmentCreate, AdjustmentRead
from api.schemas.errors import BODY_TOO_LARGE, NO_PLATFORM_JWT, UNREADABLE_BODY, error_responses
from metering.adjustments.service import MAX_IDEMPOTENCY_KEY, adjustment_service
from metering.auth.policy import access_policy

router = APIRouter(prefix="/v1", tags=["finance"])

AccountName = Annotated[str, Path(pattern=NAME_PATTERN, description="A user or org name.", examples=["acme"])]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=r"^[\x21-\x7e]+$",
        description="Retrying with the same key (per account) and body returns the same adjustment, posted once.",
        examples=["refund-outage-2026-11-acme"],
    ),
]
# Set on the answer to a retry: the adjustment was made by an earlier request with the same key.
REPLAYED_HEADER = "Idempotent-Replayed"


@router.post(
    "/finance/accounts/{name}/adjustments",
    response_model=AdjustmentRead,
    status_code=201,
    responses=error_responses(
        {
            400: UNREADABLE_BODY,
            401: NO_PLATFORM_JWT,
            403: "the caller may not do this (finance operations need the finance role)",
            404: "no such account",
            409: "the Idempotency-Key was already used for another adjustment of the account; or the account's "
            "plan has no pay-as-you-go (it is never invoiced)",
            413: BODY_TOO_LARGE,
            422: "malformed name, body or Idempotency-Key; an amount of 0; a future period",
            503: "the database could not answer in time (a statement ran past its timeout); ask again",
        }
    ),
    summary="Adjust an account's bill",
)
async def create_adjustment(
    name: AccountName,
    body: AdjustmentCreate,
    principal: PrincipalDep,
    session: SessionDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> AdjustmentRead:
    """Finance corrects the account's bill for ``period`` by ``amount_nano_usd`` (> 0 owed, < 0 in its favour).
    It is posted to the period it corrects while that is open, else to the first open one, and shows on the next
    invoice made; a credit larger than that invoice carries on to the following one. Audited.

    A retry with the same ``Idempotency-Key`` and body answers with the same adjustment (and
    ``Idempotent-Replayed: true``); with another body, 409."""
    access_policy.authorize_finance_operation(principal)
    made = await adjustment_service.adjust(
        session,
        account_name=name,
        amount_nano_usd=body.amount_nano_usd,
        reason=body.reason,
        corrects_period=body.period,
        request_ids=body.request_ids,
        idempotency_key=idempotency_key,
        actor=principal.user,
    )
    if made.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    view = made.adjustment
    return AdjustmentRead(
        id=view.id,
        account=view.account,
        amount_nano_usd=view.amount_nano_usd,
        period=view.period,
        corrects_period=view.corrects_period,
        reason=view.reason,
        request_ids=view.request_ids,
        created_by=view.created_by,
        created_at=view.created_at,
    )
