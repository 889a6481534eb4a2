"""SQL of the step-by-step authorize decision: the parties of a request and the locked period row.

Statements are built once with bound parameters and run on Core, without the ORM.
This is SQLite's path, and PostgreSQL's when a decision must create a user or grant
credits; PostgreSQL's usual path is one statement (``metering.hot_path.pg_decision``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Select, and_, bindparam, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Account, DisabledProvider, Membership, Provider


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: str
    credit_eligible: bool
    default_estimate_nano_usd: int


@dataclass(frozen=True, slots=True)
class Party:
    """The columns of an account the decision reads (duck-types ``Account`` for the plan rules)."""

    name: str
    kind: str
    plan: str
    seats: int
    status: str
    spending_limit_nano_usd: int | None


@dataclass(slots=True)
class Parties:
    """The accounts a request names, whether the user is a member of the bill_to org, and the
    named providers disabled for each account."""

    accounts: dict[str, Party] = field(default_factory=dict)
    is_member: bool = False
    disabled: dict[str, set[str]] = field(default_factory=dict)


_ACCOUNT_COLUMNS = (
    Account.name,
    Account.kind,
    Account.plan,
    Account.seats,
    Account.status,
    Account.spending_limit_nano_usd,
)


def _parties_statement(with_bill_to: bool) -> Select[*tuple[Any, ...]]:
    """One row per (account, disabled named provider), or one with a NULL provider when none is disabled."""
    member: ColumnElement[Any]
    names: list[BindParameter[Any]]
    if with_bill_to:
        member = (
            select(Membership.role)
            .where(Membership.org_name == bindparam("bill_to"), Membership.user_name == bindparam("user"))
            .scalar_subquery()
        )
        names = [bindparam("user"), bindparam("bill_to")]
    else:
        member, names = literal(None), [bindparam("user")]
    return (
        select(*_ACCOUNT_COLUMNS, member.label("member_role"), DisabledProvider.provider_id)
        .outerjoin(
            DisabledProvider,
            and_(
                DisabledProvider.account_name == Account.name,
                DisabledProvider.provider_id.in_(bindparam("providers", expanding=True)),
            ),
        )
        .where(Account.name.in_(names))
    )


_PARTIES = {False: _parties_statement(False), True: _parties_statement(True)}


class AuthorizeRepository:
    async def load_parties(
        self, session: AsyncSession, *, user: str, bill_to: str | None, provider_ids: Sequence[str]
    ) -> Parties:
        """User, bill_to org, membership and disabled providers in one round trip."""
        with_bill_to = bill_to is not None and bill_to != user
        params: dict[str, object] = {"user": user, "providers": list(provider_ids)}
        if with_bill_to:
            params["bill_to"] = bill_to
        rows = await (await session.connection()).execute(_PARTIES[with_bill_to], params)
        parties = Parties()
        for name, kind, plan, seats, status, limit, role, disabled in rows:
            if name not in parties.accounts:
                parties.accounts[name] = Party(name, kind, plan, seats, status, limit)
            parties.is_member = parties.is_member or role is not None
            bucket = parties.disabled.setdefault(name, set())
            if disabled is not None:
                bucket.add(disabled)
        return parties

    async def provider_table(self, session: AsyncSession) -> dict[str, ProviderInfo]:
        rows = await session.execute(select(Provider.id, Provider.credit_eligible, Provider.default_estimate_nano_usd))
        return {pid: ProviderInfo(pid, bool(eligible), default) for pid, eligible, default in rows}


authorize_repository = AuthorizeRepository()
