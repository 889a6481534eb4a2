"""Internal sync routes for accounts and org memberships (SPEC §5.3)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.deps import ServiceAuth, SessionDep
from api.schemas.accounts import NAME_PATTERN, AccountRead, AccountUpdate, MembershipRead, MembershipUpdate
from api.schemas.errors import BODY_TOO_LARGE, NO_SERVICE_TOKEN, UNREADABLE_BODY, error_responses
from metering.accounts.service import AccountSync, account_service
from metering.errors import NotFound

router = APIRouter(
    prefix="/internal/v1",
    tags=["internal"],
    dependencies=[ServiceAuth],
    responses=error_responses({401: NO_SERVICE_TOKEN, 422: "malformed name or body"}),
)

AccountName = Annotated[str, Path(pattern=NAME_PATTERN, examples=["acme"])]
UserName = Annotated[str, Path(pattern=NAME_PATTERN, examples=["alice"])]
_BODY_ERRORS = error_responses({400: UNREADABLE_BODY, 413: BODY_TOO_LARGE})


@router.put(
    "/accounts/{name}",
    response_model=AccountRead,
    summary="Create or update an account",
    responses={**_BODY_ERRORS, **error_responses({409: "the name belongs to an account of the other kind"})},
)
async def put_account(name: AccountName, body: AccountUpdate, session: SessionDep) -> AccountRead:
    """The platform's sync of a user or org: kind, plan and seats. Unknown plans are 422."""
    account, _ = await account_service.upsert_account(
        session, name=name, sync=AccountSync(kind=body.kind, plan=body.plan, seats=body.seats)
    )
    return AccountRead(
        name=account.name, kind=account.kind, plan=account.plan, seats=account.seats, status=account.status
    )


@router.put(
    "/orgs/{org}/members/{user}",
    response_model=MembershipRead,
    summary="Add an org member or change their role",
    responses={**_BODY_ERRORS, **error_responses({404: "no such org or user"})},
)
async def put_member(org: AccountName, user: UserName, body: MembershipUpdate, session: SessionDep) -> MembershipRead:
    """Set ``user``'s role in ``org`` (admin, write or read)."""
    membership, _ = await account_service.put_member(session, org=org, user=user, role=body.role)
    return MembershipRead(org=membership.org_name, user=membership.user_name, role=membership.role)


@router.delete(
    "/orgs/{org}/members/{user}",
    status_code=204,
    summary="Remove an org member",
    responses=error_responses({404: "no such org or membership"}),
)
async def delete_member(org: AccountName, user: UserName, session: SessionDep) -> Response:
    """Remove ``user`` from ``org``; 404 when they were not a member."""
    removed = await account_service.remove_member(session, org=org, user=user)
    if not removed:
        raise NotFound(f"{user!r} is not a member of {org!r}")
    return Response(status_code=204)
