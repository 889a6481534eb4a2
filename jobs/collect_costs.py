"""The collect-costs job: ask every ``cost_endpoint`` provider for the cost of its due pending requests.

Providers are drained concurrently (one asyncio task each, each batch in its own
``BatchScope``), so a slow or failing provider never delays the others; a
provider that fails is logged and backed off while the rest go on.

Test hook: ``METERING_TEST_PAUSE_AT`` = ``after_claim`` | ``after_answer`` |
``mid_transaction`` makes the job print ``paused at <point>`` to stderr and sleep
there (``METERING_TEST_PAUSE_SECONDS``, default 3600) on the first batch, so
tests can kill a worker at an exact step and check that nothing is lost or
priced twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from metering.collection.batch_scope import BatchScope, HeldSlots, LeaseLost
from metering.collection.cost_client import CostClient
from metering.collection.errors import ProviderUnavailable
from metering.collection.service import CollectTarget, collection_service
from metering.config import Settings, get_settings
from metering.db import Database
from metering.metrics import cost_batch_seconds, cost_batches
from metering.periods import utcnow

log = logging.getLogger("metering.jobs.collect_costs")

PAUSE_POINTS = ("after_claim", "after_answer", "mid_transaction")


@dataclass
class ProviderPass:
    """Counts and step timings of one provider in one pass."""

    provider_id: str
    batches: int = 0
    priced: int = 0
    quarantined: int = 0
    unpriced: int = 0
    deferred: int = 0
    replayed: int = 0
    lost_lease: int = 0
    failure: str | None = None
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("claim", "http", "validate", "apply"), 0.0)
    )

    def describe(self) -> str:
        timing = " ".join(f"{step}={value:.3f}s" for step, value in self.seconds.items())
        text = (
            f"{self.provider_id}: batches={self.batches} priced={self.priced} quarantined={self.quarantined} "
            f"unpriced={self.unpriced} deferred={self.deferred} replayed={self.replayed} lost_lease={self.lost_lease} {timing}"
        )
        return f"{text} failed={self.failure}" if self.failure else text


def worker_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _pause(point: str) -> None:
    """The test hook described in the module docstring; does nothing unless the variable names ``point``."""
    if os.environ.get("METERING_TEST_PAUSE_AT") != point:
        return
    os.environ.pop("METERING_TEST_PAUSE_AT")  # pause once
    print(f"paused at {point}", file=sys.stderr, flush=True)
    await asyncio.sleep(float(os.environ.get("METERING_TEST_PAUSE_SECONDS", "3600")))


async def collect_provider(
    database: Database, client: CostClient, target: CollectTarget, *, owner: str, settings: Settings, slots: HeldSlots
) -> ProviderPass:
    """Drain one provider's due requests, batch after batch, until none is due or it fails."""
    stats = ProviderPass(target.provider_id)
    due_before = utcnow()  # rows deferred during this pass are not asked again in it
    while True:
        started = time.perf_counter()
        # Its own transaction: a half-open circuit's probe is taken (and seen taken) at once.
        async with database.session_scope() as session:
            gate = await collection_service.check_gate(
                session, provider_id=target.provider_id, now=utcnow(), lease_seconds=settings.cost_lease_seconds
            )
        if gate in ("backoff", "circuit_open"):
            stats.failure = stats.failure or gate
            return stats
        stats.seconds["claim"] += time.perf_counter() - started
        scope = BatchScope(database, lease_seconds=settings.cost_lease_seconds, slots=slots)
        try:
            async with scope:
                done = await _collect_batch(
                    scope,
                    client,
                    target,
                    stats,
                    owner=owner,
                    settings=settings,
                    due_before=due_before,
                    probe=gate == "probe",
                )
        except LeaseLost as lost:
            # The batch's transaction ended before it was applied: its rows are asked again.
            log.warning("provider %s: a batch's lease ended before it was applied (%s)", target.provider_id, lost)
            cost_batches.labels(target.provider_id, "lease_lost").inc()
            stats.lost_lease += scope.rows_claimed
            done = False
        if done:
            return stats


async def _collect_batch(
    scope: BatchScope,
    client: CostClient,
    target: CollectTarget,
    stats: ProviderPass,
    *,
    owner: str,
    settings: Settings,
    due_before: datetime,
    probe: bool,
) -> bool:
    """Claim, ask and apply one batch in ``scope``; True when the provider's pass is over."""
    started = time.perf_counter()
    async with scope.step() as session:
        batch = await collection_service.claim_batch(
            session, target=target, owner=owner, due_before=due_before, settings=settings, probe=probe, held=scope.held
        )
    claimed = time.perf_counter()
    stats.seconds["claim"] += claimed - started
    if batch is None:
        return True
    scope.rows_claimed = len(batch.rows)
    await _pause("after_claim")
    try:
        body = await collection_service.ask(client, batch=batch)
        asked = time.perf_counter()
        stats.seconds["http"] += asked - claimed
        answer = collection_service.read(body, batch=batch, settings=settings)
        stats.seconds["validate"] += time.perf_counter() - asked
    except ProviderUnavailable as failure:
        async with scope.step(last=True) as session:
            until = await collection_service.fail_batch(session, batch=batch, failure=failure)
        cost_batches.labels(target.provider_id, failure.kind).inc()
        log.warning(
            "provider %s failed (%s): %s; backed off until %s",
            target.provider_id,
            failure.kind,
            failure.detail,
            until.isoformat(),
        )
        stats.failure = failure.kind
        return True
    await _pause("after_answer")
    applying = time.perf_counter()
    async with scope.step(last=True) as session:
        outcome = await collection_service.apply_answer(session, batch=batch, answer=answer, settings=settings)
        await _pause("mid_transaction")
    finished = time.perf_counter()
    stats.seconds["apply"] += finished - applying
    cost_batches.labels(target.provider_id, "ok").inc()
    cost_batch_seconds.labels(target.provider_id).observe(finished - started)
    stats.batches += 1
    stats.priced += outcome.priced
    stats.quarantined += outcome.quarantined
    stats.unpriced += outcome.unpriced
    stats.deferred += outcome.deferred
    stats.replayed += outcome.replayed
    stats.lost_lease += outcome.lost_lease
    # A half-open circuit lets one batch through; the next pass drains if it went well.
    return batch.probe


async def _guarded(
    database: Database, client: CostClient, target: CollectTarget, *, owner: str, settings: Settings, slots: HeldSlots
) -> ProviderPass:
    """One provider's pass; an unexpected error is logged and does not stop the other providers."""
    try:
        stats = await collect_provider(database, client, target, owner=owner, settings=settings, slots=slots)
    except Exception:  # one failing unit is logged and the rest go on
        log.exception("collecting costs of provider %s failed", target.provider_id)
        cost_batches.labels(target.provider_id, "error").inc()
        stats = ProviderPass(target.provider_id, failure="error")
    try:
        async with database.session_scope() as session:
            await collection_service.observe_oldest_pending(session, provider_id=target.provider_id)
    except Exception:  # the gauge is best effort
        log.exception("cannot measure the oldest pending request of %s", target.provider_id)
    return stats


async def run_once(database: Database) -> str:
    """Drain the due work of every provider once; returns a one-line summary per provider."""
    settings = get_settings()
    owner = worker_id()
    started = time.perf_counter()
    async with database.session_scope() as session:
        targets = await collection_service.list_targets(session)
    # Held leases keep a connection each through the provider's answer: at most the pool's size,
    # so the other providers' short transactions always find a connection (the pool overflows).
    slots = HeldSlots(database.pool_size)
    async with CostClient(settings) as client:
        passes = await asyncio.gather(
            *(_guarded(database, client, target, owner=owner, settings=settings, slots=slots) for target in targets)
        )
    elapsed = time.perf_counter() - started
    priced = sum(p.priced for p in passes)
    head = f"collect-costs: {len(targets)} providers, {sum(p.batches for p in passes)} batches, priced={priced} in {elapsed:.3f}s"
    summary = "\n".join([head, *(f"  {p.describe()}" for p in passes)])
    log.debug(summary)  # the scheduler and `jobs run-once` print it once per pass
    return summary
