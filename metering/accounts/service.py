"""Accounts and org memberships as the platform syncs them (SPEC §3, §5.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.errors import AccountKindConflict, NotAnOrg, NotAUser, PlanKindMismatch, UnknownPlan
from metering.accounts.repository import account_repository
from metering.config import get_settings
from metering.models import Account, Membership
from metering.periods import utcnow

DEFAULT_USER_PLAN = "free"
BILL_TO_PLANS = ("team", "enterprise")


class OrgTerms(Protocol):
    """What the bill_to rule reads of an org: an ``Account``, or the plain columns read with Core."""

    @property
    def kind(self) -> str: ...

    @property
    def plan(self) -> str: ...


def bill_to_refusal(*, user: str, org: OrgTerms | None, is_member: bool) -> str | None:
    """Why ``org`` may not pay for ``user``'s request, or None when it may (SPEC §3).

    The one rule shared by authorize (which refuses) and ingest (which stores the record
    against the user, flagged with this reason).
    """
    if org is None:
        return "unknown_account"
    if org.kind != "org" or org.plan not in BILL_TO_PLANS:
        return "bill_to_not_eligible"
    if not is_member:
        return "not_a_member"
    return None


@dataclass(frozen=True)
class AccountSync:
    kind: str
    plan: str
    seats: int = 1


class AccountService:
    async def upsert_account(self, session: AsyncSession, *, name: str, sync: AccountSync) -> tuple[Account, bool]:
        """Create or update an account; returns it and whether it was created."""
        terms = get_settings().plans.get(sync.plan)
        if terms is None:
            raise UnknownPlan(f"unknown plan {sync.plan!r}", plan=sync.plan)
        if terms.kind != sync.kind:
            raise PlanKindMismatch(f"plan {sync.plan!r} is for {terms.kind} accounts, not {sync.kind}")
        now = utcnow()
        account = await account_repository.get(session, name)
        if account is None:
            account = Account(
                name=name,
                kind=sync.kind,
                plan=sync.plan,
                seats=sync.seats,
                status="active",
                created_at=now,
                updated_at=now,
            )
            session.add(account)
            await session.flush()
            return account, True
        if account.kind != sync.kind:
            raise AccountKindConflict(f"account {name!r} is a {account.kind}, not a {sync.kind}")
        account.plan, account.seats, account.updated_at = sync.plan, sync.seats, now
        await session.flush()
        return account, False

    async def ensure_users(self, session: AsyncSession, names: set[str]) -> None:
        """Users never seen before are created on the free plan; the platform syncs plans later."""
        await account_repository.insert_missing_users(session, names, plan=DEFAULT_USER_PLAN, now=utcnow())

    async def put_member(self, session: AsyncSession, *, org: str, user: str, role: str) -> tuple[Membership, bool]:
        org_account = await account_repository.get(session, org)
        if org_account is None or org_account.kind != "org":
            raise NotAnOrg(f"no org named {org!r}", org=org)
        await self.ensure_users(session, {user})
        user_account = await account_repository.get(session, user)
        if user_account is None:
            raise RuntimeError(f"account {user!r} missing right after ensure_users created it")
        if user_account.kind != "user":
            raise NotAUser(f"{user!r} is an org, not a user", user=user)
        membership = await account_repository.membership(session, org=org, user=user)
        if membership is None:
            membership = Membership(org_name=org, user_name=user, role=role, created_at=utcnow())
            session.add(membership)
            await session.flush()
            return membership, True
        membership.role = role
        await session.flush()
        return membership, False

    async def remove_member(self, session: AsyncSession, *, org: str, user: str) -> bool:
        org_account = await account_repository.get(session, org)
        if org_account is None or org_account.kind != "org":
            raise NotAnOrg(f"no org named {org!r}", org=org)
        return await account_repository.delete_membership(session, org=org, user=user)


account_service = AccountService()
