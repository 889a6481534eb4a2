"""The provider table, cached in process for the authorize hot path.

Staleness, documented: a change to an existing provider (credit eligibility,
default estimate) reaches authorize within ``TTL_SECONDS``; a provider named by a
request but missing from the cache triggers a reload at most every
``MISS_RELOAD_SECONDS``, so a newly registered provider is seen within that time.
Nothing else here is cached: accounts, memberships, disabled providers and money
are read fresh in every decision.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from metering.authorize.repository import ProviderInfo, authorize_repository

TTL_SECONDS = 5.0
MISS_RELOAD_SECONDS = 1.0


@dataclass
class _Snapshot:
    providers: dict[str, ProviderInfo] = field(default_factory=dict)
    loaded_at: float = float("-inf")
    refreshing: bool = False


class ProviderCatalog:
    def __init__(self) -> None:
        # One snapshot per engine, so every database (and every test's) has its own.
        self._snapshots: weakref.WeakKeyDictionary[object, _Snapshot] = weakref.WeakKeyDictionary()

    async def get_many(self, session: AsyncSession, ids: Iterable[str]) -> dict[str, ProviderInfo]:
        """The named providers that are registered, as of at most a few seconds ago."""
        snapshot = self._snapshots.get(session.bind)
        if snapshot is None:
            snapshot = self._snapshots[session.bind] = _Snapshot()
        ids = list(ids)
        age = time.monotonic() - snapshot.loaded_at
        missing = any(pid not in snapshot.providers for pid in ids)
        stale = age >= TTL_SECONDS or (missing and age >= MISS_RELOAD_SECONDS)
        if snapshot.loaded_at == float("-inf") or (stale and not snapshot.refreshing):
            # Other requests meanwhile use the previous snapshot rather than all reloading at once.
            snapshot.refreshing = True
            try:
                snapshot.providers = await authorize_repository.provider_table(session)
                snapshot.loaded_at = time.monotonic()
            finally:
                snapshot.refreshing = False
        return {pid: snapshot.providers[pid] for pid in ids if pid in snapshot.providers}

    def clear(self) -> None:
        self._snapshots.clear()


provider_catalog = ProviderCatalog()
