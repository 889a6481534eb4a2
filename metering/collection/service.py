"""Cost collection as steps a job composes: claim a batch, ask the provider, apply the answer.

Each step that touches the database takes the caller's session; asking the provider
happens between them. Where the steps' transactions are, and so what a lease is, is
``metering.collection.batch_scope``'s to say: on PostgreSQL one transaction whose row
locks are the lease, on SQLite one transaction per step and a lease written on the rows.
Money moves only through ``metering.usage.accounting.settle``, which is exactly-once on
its own; the lease check in ``apply_answer`` keeps a worker whose written lease lapsed
from writing rows another worker has taken over.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from metering import metrics
from metering.collection.claims.repository import ClaimedRow, claim_repository, collection_state_repository
from metering.collection.cost_client import CostClient
from metering.collection.errors import ProviderUnavailable
from metering.collection.validation import CostAnswer, read_answer
from metering.config import Settings
from metering.errors import MeteringError
from metering.periods import utcnow
from metering.providers.service import provider_service
from metering.usage import accounting
from metering.usage.types import PricedRequest, QuarantinedRequest

log = logging.getLogger("metering.collection")


@dataclass(frozen=True)
class CollectionPolicy:
    """Back-off and circuit-breaker tuning (the defaults suit a once-a-minute job)."""

    # Per request: an ID missing from an answer is asked again after base × 2^attempts, capped.
    retry_base_seconds: float = 60.0
    retry_cap_seconds: float = 6 * 3600.0
    # Per provider: after a failed batch, wait base × 2^(failures-1) (capped) × jitter in [0.5, 1].
    provider_backoff_base_seconds: float = 5.0
    provider_backoff_cap_seconds: float = 600.0
    # After this many failures in a row the circuit opens for the cool-down; then one probe batch.
    circuit_failures: int = 5
    circuit_cooldown_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class CollectTarget:
    """What a worker needs to ask one provider, read once per pass."""

    provider_id: str
    endpoint: str
    token: str = field(repr=False)


@dataclass(slots=True)
class Batch:
    target: CollectTarget
    owner: str
    rows: list[ClaimedRow]
    # True when this batch is the one probe of a half-open circuit.
    probe: bool = False
    # True when the rows are locked by the transaction the batch is applied in (no written lease).
    held: bool = False
    by_request_id: dict[str, ClaimedRow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_request_id = {row.request_id: row for row in self.rows}

    @property
    def request_ids(self) -> list[str]:
        return [row.request_id for row in self.rows]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    priced: int
    replayed: int
    quarantined: int
    unpriced: int
    deferred: int
    lost_lease: int
    unknown_ids: int
    duplicate_ids: int


class CollectionService:
    def __init__(self, policy: CollectionPolicy | None = None) -> None:
        self.policy = policy or CollectionPolicy()

    async def list_targets(self, session: AsyncSession) -> list[CollectTarget]:
        """Every ``cost_endpoint`` provider with a usable token; one whose token cannot be
        decrypted is logged and skipped, the others are still collected."""
        targets = []
        for provider in await claim_repository.collectable_providers(session):
            try:
                token = provider_service.cost_token(provider)
            except MeteringError as exc:
                log.error("provider %s skipped: %s", provider.id, exc.detail)
                continue
            # The endpoint is always set: collectable_providers selects on it.
            if token and provider.cost_endpoint is not None:
                targets.append(CollectTarget(provider.id, provider.cost_endpoint, token))
        return targets

    async def check_gate(self, session: AsyncSession, *, provider_id: str, now: datetime, lease_seconds: int) -> str:
        """``open`` (ask freely), ``probe`` (half-open: this worker sends the one probe batch),
        ``backoff`` or ``circuit_open`` (do not ask now)."""
        state = await collection_state_repository.get(session, provider_id=provider_id)
        if state is None:
            return "open"
        if state.backoff_until is not None and state.backoff_until > now:
            return "circuit_open" if state.circuit_open_until is not None else "backoff"
        if state.circuit_open_until is not None:
            if state.circuit_open_until > now:
                return "circuit_open"
            probe_until = now + timedelta(seconds=lease_seconds)
            taken = await collection_state_repository.take_probe(
                session, provider_id=provider_id, open_until=state.circuit_open_until, now=now, probe_until=probe_until
            )
            return "probe" if taken else "circuit_open"
        return "open"

    async def claim_batch(
        self,
        session: AsyncSession,
        *,
        target: CollectTarget,
        owner: str,
        due_before: datetime,
        settings: Settings,
        probe: bool = False,
        held: bool = False,
    ) -> Batch | None:
        """Lease the next due rows of a provider (``held``: locked for the session's transaction,
        which must stay open until the batch is applied); None when there is nothing due."""
        now = utcnow()
        rows = await claim_repository.claim_due(
            session,
            provider_id=target.provider_id,
            owner=owner,
            due_before=due_before,
            now=now,
            lease_until=now + timedelta(seconds=settings.cost_lease_seconds),
            limit=settings.cost_batch_size,
            held=held,
        )
        return Batch(target, owner, rows, probe=probe, held=held) if rows else None

    async def ask(self, client: CostClient, *, batch: Batch) -> bytes:
        """The provider's raw answer for the batch (no statement runs meanwhile; a held batch's
        transaction waits idle, within its lease)."""
        return await client.fetch(
            provider=batch.target.provider_id,
            endpoint=batch.target.endpoint,
            token=batch.target.token,
            request_ids=batch.request_ids,
        )

    def read(self, body: bytes, *, batch: Batch, settings: Settings) -> CostAnswer:
        answer = read_answer(
            body,
            asked=set(batch.by_request_id),
            ceiling=settings.cost_ceiling_nano_usd,
            provider=batch.target.provider_id,
        )
        provider = batch.target.provider_id
        if answer.unknown_ids:
            log.warning(
                "provider %s answered %d IDs it was not asked for, ignored (e.g. %r)",
                provider,
                len(answer.unknown_ids),
                answer.unknown_ids[:3],
            )
        if answer.duplicate_ids:
            log.warning(
                "provider %s answered %d IDs twice; the first answer of each was used (e.g. %r)",
                provider,
                len(answer.duplicate_ids),
                answer.duplicate_ids[:3],
            )
        if answer.malformed_entries:
            log.warning(
                "provider %s sent %d entries without a string requestId, ignored", provider, answer.malformed_entries
            )
        return answer

    async def apply_answer(
        self, session: AsyncSession, *, batch: Batch, answer: CostAnswer, settings: Settings
    ) -> BatchOutcome:
        """Write one answer in the caller's transaction: prices and quarantines through ``settle``,
        missing IDs deferred with back-off (or ``unpriced`` past the maximum age).

        Every write is conditional on the row being still pending and, for a written lease,
        leased by this batch's owner, so rows another worker took over after our lease lapsed
        are left alone (counted as ``lost_lease``). A held batch's rows are locked by this very
        transaction, so no other worker can have them.
        """
        now = utcnow()
        provider = batch.target.provider_id
        costs, quarantined_by_id = answer.costs, answer.quarantined
        priced: list[PricedRequest] = []
        quarantined: list[QuarantinedRequest] = []
        quarantine_kinds: dict[int, str] = {}
        unpriced: list[int] = []
        deferred: dict[int, list[int]] = {}
        oldest_allowed = now - timedelta(seconds=settings.pending_max_age_seconds)
        for row in batch.rows:
            cost = costs.get(row.request_id)
            if cost is not None:
                priced.append(PricedRequest(row.id, cost))
            elif row.request_id in quarantined_by_id:
                kind, reason = quarantined_by_id[row.request_id]
                quarantined.append(QuarantinedRequest(row.id, reason[:256]))
                quarantine_kinds[row.id] = kind
            elif row.received_at < oldest_allowed:
                unpriced.append(row.id)
            else:
                deferred.setdefault(row.attempts, []).append(row.id)
        lease_owner = None if batch.held else batch.owner
        result = await accounting.settle(
            session, priced=priced, quarantined=quarantined, unpriced=unpriced, lease_owner=lease_owner
        )
        deferred_count = 0
        for attempts, ids in deferred.items():
            delay = min(self.policy.retry_base_seconds * 2 ** min(attempts, 32), self.policy.retry_cap_seconds)
            deferred_count += await claim_repository.defer(
                session, ids=ids, owner=lease_owner, next_attempt_at=now + timedelta(seconds=max(delay, 0.001))
            )
        if batch.probe or await self._had_failures(session, provider_id=provider):
            await collection_state_repository.clear(session, provider_id=provider, now=now)
        metrics.requests_priced.labels(provider).inc(result.priced)
        metrics.requests_unpriced.labels(provider).inc(result.unpriced)
        if result.quarantined:
            for kind in quarantine_kinds.values():
                metrics.requests_quarantined.labels(provider, kind).inc()
        written = result.priced + result.quarantined + result.unpriced + result.replayed + result.conflicts
        return BatchOutcome(
            priced=result.priced,
            replayed=result.replayed,
            quarantined=result.quarantined,
            unpriced=result.unpriced,
            deferred=deferred_count,
            lost_lease=len(batch.rows) - written - deferred_count,
            unknown_ids=len(answer.unknown_ids),
            duplicate_ids=len(answer.duplicate_ids),
        )

    async def _had_failures(self, session: AsyncSession, *, provider_id: str) -> bool:
        state = await collection_state_repository.get(session, provider_id=provider_id)
        return state is not None and (
            state.consecutive_failures > 0 or state.backoff_until is not None or state.circuit_open_until is not None
        )

    async def fail_batch(self, session: AsyncSession, *, batch: Batch, failure: ProviderUnavailable) -> datetime:
        """Give the rows back and back the provider off; returns until when it is backed off.

        A held batch's rows go back when its transaction ends: there is no lease to clear."""
        if not batch.held:
            await claim_repository.release(session, ids=[row.id for row in batch.rows], owner=batch.owner)
        return await self.record_failure(session, provider_id=batch.target.provider_id, failure=failure)

    async def record_failure(
        self, session: AsyncSession, *, provider_id: str, failure: ProviderUnavailable
    ) -> datetime:
        now = utcnow()
        state = await collection_state_repository.lock(session, provider_id=provider_id)
        state.consecutive_failures += 1
        policy = self.policy
        if failure.retry_after_seconds is not None:
            # Honour the provider's own figure (already clamped), spread a little so workers do not align.
            delay = failure.retry_after_seconds * random.uniform(1.0, 1.1)
        else:
            # The exponent is bounded: a provider down for days must not overflow the float.
            base = policy.provider_backoff_base_seconds * 2 ** min(state.consecutive_failures - 1, 32)
            delay = min(base, policy.provider_backoff_cap_seconds) * random.uniform(0.5, 1.0)
        state.backoff_until = now + timedelta(seconds=delay)
        if state.consecutive_failures >= policy.circuit_failures:
            state.circuit_open_until = now + timedelta(seconds=policy.circuit_cooldown_seconds)
        state.last_error = f"{failure.kind}: {failure.detail}"[:512]
        state.updated_at = now
        await session.flush()
        metrics.provider_errors.labels(provider_id, failure.kind).inc()
        return max(state.circuit_open_until or state.backoff_until, state.backoff_until)

    async def observe_oldest_pending(self, session: AsyncSession, *, provider_id: str) -> float:
        """Seconds since the oldest pending request of a provider arrived (0 when none); sets the gauge."""
        oldest = await claim_repository.oldest_pending(session, provider_id=provider_id)
        age = max((utcnow() - oldest).total_seconds(), 0.0) if oldest else 0.0
        metrics.oldest_pending_seconds.labels(provider_id).set(age)
        return age


collection_service = CollectionService()
