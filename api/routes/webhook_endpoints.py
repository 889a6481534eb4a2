"""An org's webhook endpoints, their delivery log and manual replay (SPEC §11); org admins only.

The endpoint's secret is in the answer to its registration and nowhere else afterwards. The
delivery routes come first, so the schema (and its fuzz test) lists them before the deletion of
an endpoint.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from api.auth import PrincipalDep
from api.deps import SessionDep
from api.schemas.accounts import NAME_PATTERN
from api.schemas.errors import BODY_TOO_LARGE, NO_PLATFORM_JWT, UNREADABLE_BODY, error_responses
from api.schemas.webhooks import (
    WebhookDeliveryPage,
    WebhookDeliveryRead,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointRead,
)
from metering.auth.policy import Action, access_policy
from metering.auth.tokens import Principal
from metering.models import Account
from metering.webhooks.service import webhook_service

router = APIRouter(prefix="/v1", tags=["webhooks"])

OrgName = Annotated[str, Path(pattern=NAME_PATTERN, description="An org name.", examples=["acme"])]
EndpointId = Annotated[int, Path(ge=1, le=2**63 - 1, description="An endpoint's id.", examples=[1])]
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A delivery's id.", examples=[1])]

REFUSALS = error_responses(
    {
        401: NO_PLATFORM_JWT,
        403: "the caller knows the org but is not its admin (or the account is not an org)",
        404: "no such org, endpoint or delivery, or one the caller may not know exists",
        422: "malformed name or query",
        503: "the database could not answer in time (a statement ran past its timeout); ask again",
    }
)
_BODY_ERRORS = error_responses({400: UNREADABLE_BODY, 413: BODY_TOO_LARGE})


async def _org(session: SessionDep, principal: Principal, org: str) -> Account:
    return await access_policy.authorize_account(
        session, principal=principal, account_name=org, action=Action.MANAGE_WEBHOOKS
    )


@router.get(
    "/orgs/{org}/billing/webhook-deliveries",
    response_model=WebhookDeliveryPage,
    responses=REFUSALS,
    summary="Webhook delivery log",
)
async def list_deliveries(
    org: OrgName,
    principal: PrincipalDep,
    session: SessionDep,
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="next_cursor of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, examples=[50])] = 50,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query(description="Only these.")] = None,
) -> WebhookDeliveryPage:
    """Deliveries of events to the org's endpoints, newest first: status, attempts and the last answer (org admin)."""
    account = await _org(session, principal, org)
    rows = await webhook_service.list_deliveries(
        session, account_name=account.name, limit=limit, before_id=cursor, status=status
    )
    return WebhookDeliveryPage(
        items=[WebhookDeliveryRead.model_validate(row, from_attributes=True) for row in rows],
        next_cursor=rows[-1].id if len(rows) == limit else None,
    )


@router.post(
    "/orgs/{org}/billing/webhook-deliveries/{delivery_id}/replay",
    response_model=WebhookDeliveryRead,
    status_code=202,
    summary="Replay a webhook delivery",
    responses={**REFUSALS, **error_responses({409: "the delivery's endpoint was deleted"})},
)
async def replay_delivery(
    org: OrgName, delivery_id: DeliveryId, principal: PrincipalDep, session: SessionDep
) -> WebhookDeliveryRead:
    """Send a delivery again (same webhook-id) on the deliverer's next pass, with a fresh retry window (org admin)."""
    account = await _org(session, principal, org)
    row = await webhook_service.replay(session, account_name=account.name, delivery_id=delivery_id)
    return WebhookDeliveryRead.model_validate(row, from_attributes=True)


@router.post(
    "/orgs/{org}/billing/webhook-endpoints",
    response_model=WebhookEndpointCreated,
    status_code=201,
    summary="Register a webhook endpoint",
    responses={
        **REFUSALS,
        **_BODY_ERRORS,
        **error_responses(
            {
                422: "malformed body; a URL that is not http(s), names a loopback, private, link-local or "
                "unresolvable host; or the org has the most endpoints it may have"
            }
        ),
    },
)
async def create_endpoint(
    org: OrgName, body: WebhookEndpointCreate, principal: PrincipalDep, session: SessionDep
) -> WebhookEndpointCreated:
    """Register an endpoint for the org's events (org admin). The answer carries its signing secret, once. Audited."""
    # Resolved before the transaction's first statement, which on SQLite takes the write lock.
    url = await webhook_service.check_endpoint_url(body.url)
    account = await _org(session, principal, org)
    endpoint, secret = await webhook_service.register_endpoint(
        session, account_name=account.name, url=url, description=body.description, actor=principal.user
    )
    return WebhookEndpointCreated(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        created_at=endpoint.created_at,
        secret=secret,
    )


@router.get(
    "/orgs/{org}/billing/webhook-endpoints",
    response_model=WebhookEndpointList,
    responses=REFUSALS,
    summary="List webhook endpoints",
)
async def list_endpoints(org: OrgName, principal: PrincipalDep, session: SessionDep) -> WebhookEndpointList:
    """The org's endpoints, oldest first, without their secrets (org admin)."""
    account = await _org(session, principal, org)
    endpoints = await webhook_service.list_endpoints(session, account_name=account.name)
    return WebhookEndpointList(items=[WebhookEndpointRead.model_validate(e, from_attributes=True) for e in endpoints])


@router.delete(
    "/orgs/{org}/billing/webhook-endpoints/{endpoint_id}",
    status_code=204,
    response_class=Response,
    responses=REFUSALS,
    summary="Delete a webhook endpoint",
)
async def delete_endpoint(
    org: OrgName, endpoint_id: EndpointId, principal: PrincipalDep, session: SessionDep
) -> Response:
    """Stop sending to the endpoint; what was still pending for it is marked failed (org admin). Audited."""
    account = await _org(session, principal, org)
    await webhook_service.delete_endpoint(
        session, account_name=account.name, endpoint_id=endpoint_id, actor=principal.user
    )
    return Response(status_code=204)
