"""Internal sync routes for accounts and org memberships (SPEC §5.3)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.deps import DatabaseDep, ServiceAuth
from api.schemas.accounts import NAME_PATTERN, AccountRead, AccountUpdate, MembershipRead, MembershipUpdate
from metering.accounts.service import AccountSync, account_service
from metering.errors import NotFound

router = APIRouter(prefix="/internal/v1", tags=["internal"], dependencies=[ServiceAuth])

AccountName = Annotated[str, Path(pattern=NAME_PATTERN)]


@router.put("/accounts/{name}", response_model=AccountRead)
async def put_account(name: AccountName, body: AccountUpdate, db: DatabaseDep) -> AccountRead:
    async with db.session_scope() as session:
        account, _ = await account_service.upsert_account(
            session, name=name, sync=AccountSync(kind=body.kind, plan=body.plan, seats=body.seats)
        )
        return AccountRead(name=account.name, kind=account.kind, plan=account.plan, seats=account.seats, status=account.status)


@router.put("/orgs/{org}/members/{user}", response_model=MembershipRead)
async def put_member(org: AccountName, user: AccountName, body: MembershipUpdate, db: DatabaseDep) -> MembershipRead:
    async with db.session_scope() as session:
        membership, _ = await account_service.put_member(session, org=org, user=user, role=body.role)
        return MembershipRead(org=membership.org_name, user=membership.user_name, role=membership.role)


@router.delete("/orgs/{org}/members/{user}", status_code=204, responses={404: {"description": "no such membership"}})
async def delete_member(org: AccountName, user: AccountName, db: DatabaseDep) -> Response:
    async with db.session_scope() as session:
        removed = await account_service.remove_member(session, org=org, user=user)
    if not removed:
        raise NotFound(f"{user!r} is not a member of {org!r}")
    return Response(status_code=204)
