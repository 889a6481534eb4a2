"""Credit grants (finance gives an account credit) and the account's list of them (SPEC §8)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path

from api.auth import PrincipalDep
from api.deps import SessionDep
from api.schemas.accounts import NAME_PATTERN
from api.schemas.credit_grants import CreditGrantCreate, CreditGrantList, CreditGrantRead
from api.schemas.errors import BODY_TOO_LARGE, NO_PLATFORM_JWT, UNREADABLE_BODY, error_responses
from metering.auth.policy import Action, access_policy
from metering.credit_grants.service import credit_grant_service

router = APIRouter(prefix="/v1", tags=["finance"])

AccountName = Annotated[str, Path(pattern=NAME_PATTERN, description="A user or org name.", examples=["acme"])]

REFUSALS = error_responses(
    {
        401: NO_PLATFORM_JWT,
        403: "the caller may not do this (finance operations need the finance role)",
        404: "no such account, or one the caller may not know exists",
        422: "malformed name or body",
        503: "the database could not answer in time (a statement ran past its timeout); ask again",
    }
)


@router.post(
    "/finance/accounts/{name}/credit-grants",
    response_model=CreditGrantRead,
    status_code=201,
    responses={**REFUSALS, **error_responses({400: UNREADABLE_BODY, 413: BODY_TOO_LARGE})},
    summary="Grant credit to an account",
)
async def create_credit_grant(
    name: AccountName, body: CreditGrantCreate, principal: PrincipalDep, session: SessionDep
) -> CreditGrantRead:
    """Credit that pays after the period's plan credits and before pay-as-you-go, until ``expires_period`` ends
    (finance; audited)."""
    access_policy.authorize_finance_operation(principal)
    grant = await credit_grant_service.grant(
        session,
        account_name=name,
        amount_nano_usd=body.amount_nano_usd,
        reason=body.reason,
        expires_period=body.expires_period,
        actor=principal.user,
    )
    return CreditGrantRead(**asdict(grant))


@router.get(
    "/accounts/{name}/credit-grants",
    response_model=CreditGrantList,
    responses=REFUSALS,
    summary="Credit grants and prepaid credits of an account",
)
async def list_credit_grants(name: AccountName, principal: PrincipalDep, session: SessionDep) -> CreditGrantList:
    """Newest first, with what is left of each (self, org admin, finance)."""
    await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.READ_CREDIT_GRANTS
    )
    grants = await credit_grant_service.list_grants(session, account_name=name)
    return CreditGrantList(items=[CreditGrantRead(**asdict(grant)) for grant in grants])
