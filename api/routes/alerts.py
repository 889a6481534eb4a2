"""Alert thresholds of an account (SPEC §8 "Alerts"): read them, or replace them (audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.auth import PrincipalDep
from api.deps import SessionDep
from api.schemas.accounts import NAME_PATTERN
from api.schemas.alerts import AlertsRead, AlertsUpdate
from api.schemas.errors import BODY_TOO_LARGE, NO_PLATFORM_JWT, UNREADABLE_BODY, error_responses
from metering.alerts.service import alerts_service
from metering.auth.policy import Action, access_policy

router = APIRouter(prefix="/v1", tags=["billing"])

AccountName = Annotated[str, Path(pattern=NAME_PATTERN, description="A user or org name.", examples=["acme"])]

REFUSALS = error_responses(
    {
        401: NO_PLATFORM_JWT,
        403: "the caller knows the account but may not do this",
        404: "no such account, or one the caller may not know exists",
        422: "malformed name",
        503: "the database could not answer in time (a statement ran past its timeout); ask again",
    }
)


@router.get(
    "/accounts/{name}/billing/alerts",
    response_model=AlertsRead,
    responses=REFUSALS,
    summary="Alert thresholds",
)
async def get_alerts(name: AccountName, principal: PrincipalDep, session: SessionDep) -> AlertsRead:
    """The percentages of credits used and of the spending limit committed at which events are sent."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.READ_BILLING
    )
    thresholds = await alerts_service.get_thresholds(session, account_name=account.name)
    return AlertsRead.model_validate(thresholds, from_attributes=True)


@router.put(
    "/accounts/{name}/billing/alerts",
    response_model=AlertsRead,
    summary="Set alert thresholds",
    responses={
        **REFUSALS,
        **error_responses(
            {
                400: UNREADABLE_BODY,
                413: BODY_TOO_LARGE,
                422: "malformed body: thresholds are whole percentages 1–100, at most 10 of each kind",
            }
        ),
    },
)
async def put_alerts(name: AccountName, body: AlertsUpdate, principal: PrincipalDep, session: SessionDep) -> AlertsRead:
    """Replace the account's thresholds (the user for themselves, or an org admin). Each fires at most once
    per period. Audited."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.SET_ALERTS
    )
    thresholds = await alerts_service.set_thresholds(
        session,
        account_name=account.name,
        credits_percent=body.credits_percent,
        spending_limit_percent=body.spending_limit_percent,
        actor=principal.user,
    )
    return AlertsRead.model_validate(thresholds, from_attributes=True)
