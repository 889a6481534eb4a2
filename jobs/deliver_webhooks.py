"""The deliver-webhooks job: send due webhook deliveries concurrently, each attempt under its own timeout.

A pass keeps going while anything is in flight: as answers come back it writes them and claims
more in one short transaction, and it fans out new events every ``POLL_SECONDS``, so a delivery
to a healthy endpoint is never queued behind one that hangs. A target holds at most its share
of the slots (``DeliveryService.per_target``), and one that timed out or could not be reached
gets no more in the pass. The HTTP requests run outside any transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from jobs.collect_costs import worker_id
from metering.config import Settings, get_settings
from metering.db import Database
from metering.periods import utcnow
from metering.webhooks.delivery import delivery_service
from metering.webhooks.repository import ClaimedDelivery
from metering.webhooks.sender import AttemptResult, WebhookSender

log = logging.getLogger("metering.jobs.deliver_webhooks")

POLL_SECONDS = 0.5
# A pass claims new work for this long, then finishes what is in flight (the scheduler starts the next).
CLAIM_FOR_SECONDS = 50.0
# Outcomes after which a target gets nothing more in the pass: it is down, not just refusing one event.
_TARGET_DOWN = frozenset({"timeout", "unreachable"})


class _Pass:
    """One pass's deliveries in flight, per target, and its counts."""

    def __init__(self, database: Database, settings: Settings, sender: WebhookSender) -> None:
        self.database = database
        self.settings = settings
        self.sender = sender
        self.owner = worker_id()
        self.started_at = utcnow()
        self.started = time.perf_counter()
        self.counts: Counter[str] = Counter()
        self.in_flight: dict[asyncio.Task[AttemptResult], ClaimedDelivery] = {}
        self.per_target: Counter[str] = Counter()
        self.down: set[str] = set()
        # Each claim takes up to half a target's share, once it has that much room.
        self.cap = delivery_service.per_target(settings)
        self.batch = max(1, self.cap // 2)

    async def run(self) -> None:
        results: list[AttemptResult] = []
        next_fan_out = 0.0
        while True:
            claiming = time.perf_counter() - self.started < CLAIM_FOR_SECONDS
            fanned = 0
            if claiming and time.perf_counter() >= next_fan_out:
                async with self.database.session_scope() as session:
                    fanned = await delivery_service.fan_out(session, settings=self.settings)
                self.counts["events"] += fanned
                # A full batch: more events are waiting, fan out again next time round.
                full = fanned >= delivery_service.policy.fan_out_batch
                next_fan_out = time.perf_counter() + (0 if full else POLL_SECONDS)
            claimed = await self._record_and_claim(results, claim=claiming)
            for delivery in claimed:
                self.in_flight[asyncio.create_task(self.sender.send(delivery))] = delivery
                self.per_target[delivery.target] += 1
            if not self.in_flight:
                if claimed or fanned:
                    continue
                return
            results = await self._answers()

    async def _record_and_claim(self, results: list[AttemptResult], *, claim: bool) -> list[ClaimedDelivery]:
        """Write ``results`` and, when there is room, claim more: one transaction."""
        free = self.settings.webhook_concurrency - len(self.in_flight)
        claim = claim and free > 0
        if not results and not claim:
            return []
        skip = {target for target, n in self.per_target.items() if n > self.cap - self.batch} | self.down
        claimed: list[ClaimedDelivery] = []
        async with self.database.session_scope() as session:
            if results:
                self.counts.update(
                    await delivery_service.record(session, owner=self.owner, results=results, settings=self.settings)
                )
            if claim:
                claimed = await delivery_service.claim(
                    session,
                    owner=self.owner,
                    settings=self.settings,
                    pass_started=self.started_at,
                    limit=free,
                    per_target=self.batch,
                    skip_targets=skip,
                )
        return claimed

    async def _answers(self) -> list[AttemptResult]:
        """The attempts that ended: waits for the first (at most ``POLL_SECONDS``), and takes those that
        ended with it, so a burst of answers is written in one transaction."""
        done, _ = await asyncio.wait(self.in_flight, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if done and len(done) < len(self.in_flight):
            await asyncio.sleep(0.001)
        results = []
        for task in [task for task in self.in_flight if task.done()]:
            delivery = self.in_flight.pop(task)
            self.per_target[delivery.target] -= 1
            result = task.result()
            if result.outcome in _TARGET_DOWN:
                self.down.add(delivery.target)
            results.append(result)
        return results

    def abandon(self) -> None:
        """After an error: what is still in flight is dropped; its leases lapse and it is sent again."""
        for task in self.in_flight:
            task.cancel()


async def run_once(database: Database) -> str:
    """Deliver what is due until nothing is due or in flight; returns a one-line summary."""
    settings = get_settings()
    async with WebhookSender(settings) as sender:
        delivery_pass = _Pass(database, settings, sender)
        try:
            await delivery_pass.run()
        finally:
            delivery_pass.abandon()
    try:
        async with database.session_scope() as session:
            await delivery_service.observe_oldest_undelivered(session)
    except Exception:  # the gauge is best effort
        log.exception("cannot measure the oldest undelivered webhook event")
    counts = delivery_pass.counts
    elapsed = time.perf_counter() - delivery_pass.started
    return (
        f"deliver-webhooks: {counts['events']} events fanned out; delivered={counts['delivered']} "
        f"retry={counts['retry']} failed={counts['failed']} in {elapsed:.3f}s"
    )
