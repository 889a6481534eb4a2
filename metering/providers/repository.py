"""SQL of providers."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Provider


class ProviderRepository:
    async def get(self, session: AsyncSession, provider_id: str) -> Provider | None:
        return await session.get(Provider, provider_id)

    async def list_all(self, session: AsyncSession) -> list[Provider]:
        return list(await session.scalars(select(Provider).order_by(Provider.id)))

    async def get_many(self, session: AsyncSession, ids: Iterable[str]) -> dict[str, Provider]:
        ids = list(set(ids))
        if not ids:
            return {}
        return {p.id: p for p in await session.scalars(select(Provider).where(Provider.id.in_(ids)))}


provider_repository = ProviderRepository()
