"""User-facing billing: the period summary, spending limit, disabled providers, invoices, audit (SPEC §8).

Every route authorizes the caller against the named account through ``access_policy``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.auth import PrincipalDep
from api.deps import SessionDep
from api.schemas.accounts import NAME_PATTERN
from api.schemas.billing import (
    AuditEventRead,
    AuditPage,
    BillingRead,
    DisabledProvidersRead,
    DisabledProvidersUpdate,
    InvoiceList,
    PeriodText,
    SpendingLimitRead,
    SpendingLimitUpdate,
)
from api.schemas.errors import BODY_TOO_LARGE, NO_PLATFORM_JWT, UNREADABLE_BODY, error_responses
from metering.analytics.service import analytics_service
from metering.auth.policy import Action, access_policy
from metering.invoicing.service import invoicing_service
from metering.limits.service import limits_service

router = APIRouter(prefix="/v1", tags=["billing"])

AccountName = Annotated[str, Path(pattern=NAME_PATTERN, description="A user or org name.", examples=["acme"])]
OrgName = Annotated[str, Path(pattern=NAME_PATTERN, description="An org name.", examples=["acme"])]
Period = Annotated[
    PeriodText | None,
    Query(description="YYYY-MM, from 1970-01 to 9998-12; default the current period.", examples=["2026-11"]),
]
Limit = Annotated[int, Query(ge=1, le=500, examples=[50])]

REFUSALS = error_responses(
    {
        401: NO_PLATFORM_JWT,
        403: "the caller knows the account but may not do this",
        404: "no such account, or one the caller may not know exists",
        422: "malformed name or query",
        503: "the database could not answer in time (a statement ran past its timeout); ask again",
    }
)
_BODY_ERRORS = error_responses({400: UNREADABLE_BODY, 413: BODY_TOO_LARGE})


@router.get(
    "/accounts/{name}/billing",
    response_model=BillingRead,
    responses=REFUSALS,
    summary="Billing summary of a period",
)
async def get_billing(
    name: AccountName, principal: PrincipalDep, session: SessionDep, period: Period = None
) -> BillingRead:
    """Credits, pay-as-you-go, limit and in-flight amounts of one period (self, org admin, finance)."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.READ_BILLING
    )
    summary = await analytics_service.get_billing_summary(session, account=account, period=period)
    return BillingRead(**summary.__dict__)


@router.put(
    "/accounts/{name}/billing/spending-limit",
    response_model=SpendingLimitRead,
    summary="Set or remove the spending limit",
    responses={**REFUSALS, **_BODY_ERRORS, **error_responses({422: "malformed body or unknown field"})},
)
async def put_spending_limit(
    name: AccountName, body: SpendingLimitUpdate, principal: PrincipalDep, session: SessionDep
) -> SpendingLimitRead:
    """Set or remove the cap on a period's pay-as-you-go (org admin, or a pro user for themselves). Audited."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.SET_SPENDING_LIMIT
    )
    await limits_service.set_spending_limit(
        session, account_name=account.name, limit_nano_usd=body.limit_nano_usd, actor=principal.user
    )
    await session.flush()
    await session.refresh(account)
    return SpendingLimitRead(account=account.name, spending_limit_nano_usd=account.spending_limit_nano_usd)


@router.put(
    "/orgs/{org}/billing/disabled-providers",
    response_model=DisabledProvidersRead,
    summary="Replace the org's disabled providers",
    responses={
        **REFUSALS,
        **_BODY_ERRORS,
        **error_responses({422: "malformed body, unknown field or unknown provider"}),
    },
)
async def put_disabled_providers(
    org: OrgName, body: DisabledProvidersUpdate, principal: PrincipalDep, session: SessionDep
) -> DisabledProvidersRead:
    """Replace the set of providers switched off for the org (org admin). Unknown ids are 422. Audited."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=org, action=Action.SET_DISABLED_PROVIDERS
    )
    providers = body.provider_ids()
    await limits_service.set_disabled_providers(
        session, account_name=account.name, providers=providers, actor=principal.user
    )
    await session.flush()
    return DisabledProvidersRead(
        account=account.name,
        disabled_providers=await limits_service.disabled_providers(session, account_name=account.name),
    )


@router.get(
    "/accounts/{name}/invoices",
    response_model=InvoiceList,
    responses=REFUSALS,
    summary="Invoices of closed periods",
)
async def list_invoices(name: AccountName, principal: PrincipalDep, session: SessionDep) -> InvoiceList:
    """The account's invoices of closed periods, newest first, with their status and per-provider lines."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.READ_INVOICES
    )
    views = await invoicing_service.list_invoices(session, account=account.name)
    return InvoiceList(items=[view.as_dict() for view in views])


@router.get(
    "/accounts/{name}/audit",
    response_model=AuditPage,
    responses=REFUSALS,
    summary="Billing settings audit log",
)
async def list_audit(
    name: AccountName,
    principal: PrincipalDep,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page.")] = None,
    limit: Limit = 50,
) -> AuditPage:
    """Every billing setting change of the account, newest first: who, when, before, after."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.READ_AUDIT
    )
    page = await analytics_service.list_audit(session, account=account, cursor=cursor, limit=limit)
    return AuditPage(
        items=[
            AuditEventRead(
                id=event.id,
                actor=event.actor,
                created_at=event.created_at,
                action=event.action,
                before=event.before,
                after=event.after,
            )
            for event in page.items
        ],
        next_cursor=page.next_cursor,
    )
