"""SQL of spending limits, disabled providers and the audit trail of billing settings."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import AuditEvent, DisabledProvider, Provider


class LimitRepository:
    async def disabled_providers(self, session: AsyncSession, account: str) -> list[str]:
        rows = await session.scalars(
            select(DisabledProvider.provider_id)
            .where(DisabledProvider.account_name == account)
            .order_by(DisabledProvider.provider_id)
        )
        return list(rows)

    async def replace_disabled_providers(self, session: AsyncSession, account: str, providers: list[str]) -> None:
        await session.execute(delete(DisabledProvider).where(DisabledProvider.account_name == account))
        if providers:
            await session.execute(
                insert(DisabledProvider), [{"account_name": account, "provider_id": p} for p in providers]
            )

    async def registered_providers(self, session: AsyncSession, ids: Iterable[str]) -> set[str]:
        ids = sorted(set(ids))
        if not ids:
            return set()
        return set(await session.scalars(select(Provider.id).where(Provider.id.in_(ids))))

    def add_audit_event(
        self, session: AsyncSession, *, account: str, actor: str, action: str, before: str, after: str, now: datetime
    ) -> AuditEvent:
        event = AuditEvent(account_name=account, actor=actor, action=action, before=before, after=after, created_at=now)
        session.add(event)
        return event

    async def audit_events(
        self, session: AsyncSession, *, account: str, limit: int, before_id: int | None
    ) -> list[AuditEvent]:
        statement = select(AuditEvent).where(AuditEvent.account_name == account)
        if before_id is not None:
            statement = statement.where(AuditEvent.id < before_id)
        return list(await session.scalars(statement.order_by(AuditEvent.id.desc()).limit(limit)))


limit_repository = LimitRepository()
