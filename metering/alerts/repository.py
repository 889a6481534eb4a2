"""SQL of alert thresholds: an account's own, and the terms of many accounts at once for a posting."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Account, AlertSettings
from metering.sql import chunks

# (spending limit, credits thresholds or None, spending-limit thresholds or None) per account.
StoredTerms = tuple[int | None, list[int] | None, list[int] | None]


class AlertRepository:
    async def get(self, session: AsyncSession, account: str) -> AlertSettings | None:
        return await session.get(AlertSettings, account)

    def add(self, session: AsyncSession, settings: AlertSettings) -> None:
        session.add(settings)

    async def terms(self, session: AsyncSession, names: Iterable[str]) -> dict[str, StoredTerms]:
        """Each named account's spending limit and stored thresholds (None where it chose none)."""
        found: dict[str, StoredTerms] = {}
        for part in chunks(sorted(set(names))):
            rows = await session.execute(
                select(
                    Account.name,
                    Account.spending_limit_nano_usd,
                    AlertSettings.credits_percent,
                    AlertSettings.spending_limit_percent,
                )
                .outerjoin(AlertSettings, AlertSettings.account_name == Account.name)
                .where(Account.name.in_(part))
            )
            for name, limit, credits_percent, limit_percent in rows:
                found[name] = (limit, credits_percent, limit_percent)
        return found


alert_repository = AlertRepository()
