"""The deliverer's steps, each in the caller's transaction: fan events out into deliveries, claim due
deliveries with a lease, write attempts' results with back-off, and measure what waits.

At least once: a delivery is leased before it is sent and its result written after, so a
deliverer killed in between loses nothing; once the lease lapses the delivery is sent again,
with the event's same ``webhook-id`` for the receiver to deduplicate on. A failed attempt is
retried after base × 2^(attempts − 1), capped, until the delivery's retry window ends, when
it is marked failed (an org admin may replay it).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from metering import metrics
from metering.config import Settings
from metering.periods import utcnow
from metering.webhooks.repository import Attempted, ClaimedDelivery, webhook_repository
from metering.webhooks.sender import AttemptResult


@dataclass(frozen=True)
class DeliveryPolicy:
    # Deliveries to one target in flight at once (at most half the deliverer's slots).
    per_target: int = 16
    retry_cap_seconds: float = 6 * 3600.0
    # Events turned into deliveries per transaction.
    fan_out_batch: int = 1_000


class DeliveryService:
    def __init__(self, policy: DeliveryPolicy | None = None) -> None:
        self.policy = policy or DeliveryPolicy()

    async def fan_out(self, session: AsyncSession, *, settings: Settings) -> int:
        """Deliveries for up to a batch of new events; returns how many events."""
        now = utcnow()
        return await webhook_repository.fan_out(
            session,
            now=now,
            platform=bool(settings.webhook_url),
            retry_until=now + timedelta(seconds=settings.webhook_retry_window_seconds),
            limit=self.policy.fan_out_batch,
        )

    async def claim(
        self,
        session: AsyncSession,
        *,
        owner: str,
        settings: Settings,
        pass_started: datetime,
        limit: int,
        per_target: int,
        skip_targets: Iterable[str] = (),
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries, at most ``per_target`` of a target, none attempted yet in
        the pass that started at ``pass_started``."""
        now = utcnow()
        return await webhook_repository.claim_due(
            session,
            owner=owner,
            now=now,
            pass_started=pass_started,
            lease_until=now + timedelta(seconds=settings.webhook_lease_seconds),
            limit=limit,
            per_target=per_target,
            skip_targets=skip_targets,
        )

    def per_target(self, settings: Settings) -> int:
        """Deliveries to one target in flight at once: at most half the slots, so others always find some."""
        return max(1, min(self.policy.per_target, settings.webhook_concurrency // 2))

    def retry_delay(self, attempts: int, settings: Settings) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones, spread a little so retries do not align."""
        base = settings.webhook_retry_base_seconds * float(2 ** min(max(attempts - 1, 0), 32))
        return min(base, self.policy.retry_cap_seconds) * random.uniform(1.0, 1.2)

    async def record(
        self, session: AsyncSession, *, owner: str, results: Sequence[AttemptResult], settings: Settings
    ) -> Counter[str]:
        """Write the results of attempts; returns how many were delivered, will be retried, or failed for good."""
        counts: Counter[str] = Counter()
        attempted = []
        now = utcnow()
        for result in results:
            delivery = result.delivery
            if result.delivered:
                status, next_at = "delivered", result.at
                metrics.webhook_delivery_seconds.observe(max((now - delivery.event_created_at).total_seconds(), 0.0))
            else:
                next_at = now + timedelta(seconds=self.retry_delay(delivery.attempts + 1, settings))
                status = "failed" if next_at > delivery.retry_until else "pending"
            outcome = {"delivered": "delivered", "pending": "retry", "failed": "failed"}[status]
            counts[outcome] += 1
            metrics.webhook_deliveries.labels(outcome, "" if result.delivered else result.outcome).inc()
            attempted.append(Attempted(delivery.id, status, result.at, result.status_code, result.error, next_at))
        await webhook_repository.write_attempts(session, owner=owner, attempts=attempted)
        return counts

    async def release(self, session: AsyncSession, *, owner: str, ids: Sequence[int]) -> None:
        await webhook_repository.release(session, owner=owner, ids=ids)

    async def observe_oldest_undelivered(self, session: AsyncSession) -> float:
        """Seconds since the oldest event not yet delivered everywhere happened (0 when none); sets the gauge."""
        oldest = await webhook_repository.oldest_undelivered(session)
        age = max((utcnow() - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        metrics.webhook_oldest_undelivered_seconds.set(age)
        return age


delivery_service = DeliveryService()
