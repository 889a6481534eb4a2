"""Spending limits and disabled providers (SPEC §3), each change audited in the same transaction.

Who may change them (an org's admin, a pro user for themselves) is decided by the
caller; this service records the ``actor`` it is given. A change that leaves the
setting as it was writes no audit row: the trail lists changes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.config import get_settings
from metering.errors import AccountNotFound
from metering.limits.errors import NegativeSpendingLimit, SpendingLimitNotApplicable, UnknownProviders
from metering.limits.repository import limit_repository
from metering.models import Account, AuditEvent
from metering.periods import utcnow

SPENDING_LIMIT_ACTION = "spending_limit.set"
DISABLED_PROVIDERS_ACTION = "disabled_providers.set"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    account: str
    actor: str
    action: str
    before: dict[str, Any]
    after: dict[str, Any]
    created_at: datetime


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _record(event: AuditEvent) -> AuditRecord:
    return AuditRecord(
        id=event.id,
        account=event.account_name,
        actor=event.actor,
        action=event.action,
        before=orjson.loads(event.before),
        after=orjson.loads(event.after),
        created_at=event.created_at,
    )


async def _audit(
    session: AsyncSession, account: Account, actor: str, action: str, field: str, before: object, after: object
) -> AuditRecord:
    """Every billing setting change leaves a row saying who, when, before and after."""
    now = utcnow()
    account.updated_at = now
    event = limit_repository.add_audit_event(
        session,
        account=account.name,
        actor=actor,
        action=action,
        before=_json({field: before}),
        after=_json({field: after}),
        now=now,
    )
    await session.flush()
    return _record(event)


class LimitService:
    async def _account(self, session: AsyncSession, name: str) -> Account:
        # Locked, so concurrent setting changes audit consistent before/after values.
        account = await account_repository.lock(session, name)
        if account is None:
            raise AccountNotFound(f"no account named {name!r}", account=name)
        return account

    async def set_spending_limit(
        self, session: AsyncSession, *, account_name: str, limit_nano_usd: int | None, actor: str
    ) -> AuditRecord | None:
        """Set (or clear, with None) the cap on a period's pay-as-you-go; returns the audit row written."""
        if limit_nano_usd is not None and (isinstance(limit_nano_usd, bool) or limit_nano_usd < 0):
            raise NegativeSpendingLimit("limit_nano_usd must be a non-negative integer or null")
        account = await self._account(session, account_name)
        terms = get_settings().plans.get(account.plan)
        if limit_nano_usd is not None and (terms is None or not terms.pay_as_you_go):
            raise SpendingLimitNotApplicable(
                f"plan {account.plan!r} has no pay-as-you-go to limit", account=account_name, plan=account.plan
            )
        before = account.spending_limit_nano_usd
        if before == limit_nano_usd:
            return None
        account.spending_limit_nano_usd = limit_nano_usd
        return await _audit(
            session, account, actor, SPENDING_LIMIT_ACTION, "spending_limit_nano_usd", before, limit_nano_usd
        )

    async def set_disabled_providers(
        self, session: AsyncSession, *, account_name: str, providers: list[str], actor: str
    ) -> AuditRecord | None:
        """Replace the account's disabled providers (registered ids only); returns the audit row written."""
        wanted = sorted(set(providers))
        unknown = sorted(set(wanted) - await limit_repository.registered_providers(session, wanted))
        if unknown:
            raise UnknownProviders(f"not registered providers: {', '.join(unknown)}", providers=unknown)
        account = await self._account(session, account_name)
        before = await limit_repository.disabled_providers(session, account_name)
        if before == wanted:
            return None
        await limit_repository.replace_disabled_providers(session, account_name, wanted)
        return await _audit(session, account, actor, DISABLED_PROVIDERS_ACTION, "disabled_providers", before, wanted)

    async def disabled_providers(self, session: AsyncSession, *, account_name: str) -> list[str]:
        return await limit_repository.disabled_providers(session, account_name)

    async def list_audit(
        self, session: AsyncSession, *, account_name: str, limit: int = 100, before_id: int | None = None
    ) -> list[AuditRecord]:
        """The account's setting changes, newest first; page with ``before_id`` = the last id seen."""
        events = await limit_repository.audit_events(
            session, account=account_name, limit=max(1, min(limit, 1000)), before_id=before_id
        )
        return [_record(event) for event in events]


limits_service = LimitService()
