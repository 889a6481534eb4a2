"""Usage ingest (SPEC §5.2): validate a batch, store new records idempotently, hand them to accounting.

A batch is stored in one transaction (on SQLite, one it may share with the batches queued
behind the same writer: ``group_commit``). Look-ups are per batch (sets of names), never per
record, and the INSERT is a single ON CONFLICT DO NOTHING statement, so a replay of the same
batch, or fifty concurrent ones, stores each record exactly once. The checks that need no
database run before the transaction (``check_batch``).

``ingest`` is an own-transaction entry point: it opens and commits the batch's transaction
itself, since on SQLite that transaction is shared with other requests' batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from metering import metrics
from metering.accounts.service import account_service, bill_to_refusal
from metering.config import get_settings
from metering.db import Database
from metering.hot_path import group_commit
from metering.periods import utcnow
from metering.usage import accounting
from metering.usage.repository import AccountTerms, Key, NewUsageRow, usage_repository
from metering.usage.validation import Rejection, ValidRecord, check_records

# Records checked between two yields to the event loop: about a millisecond of work.
_RECORDS_BETWEEN_YIELDS = 200
CONFLICT = "conflict: a different record with this provider and request_id exists"


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [rejection.as_dict() for rejection in self.rejected],
        }


@dataclass(slots=True)
class CheckedBatch:
    """A POST's records after the checks that need no database: the valid ones and the rejections."""

    received_at: datetime
    valid: list[ValidRecord]
    rejected: list[Rejection]


class UsageService:
    async def ingest_records(self, session: AsyncSession, *, records: list[object]) -> IngestResult:
        """Store the valid, new records of one POST; name every other record as duplicate or rejected."""
        result = await self.store_checked(session, batch=await self.check_batch(records))
        _count(result)
        return result

    async def check_batch(self, records: list[object]) -> CheckedBatch:
        """The checks of each record on its own (no database), done before the transaction.

        On SQLite they run while other batches are being written; the event loop is given back
        every few hundred records, so the writer's next statement is not kept waiting for a
        whole batch's checks.
        """
        received_at = utcnow()
        settings = get_settings()
        skew, max_age_days = settings.max_future_skew_seconds, settings.max_record_age_days
        valid: list[ValidRecord] = []
        rejected: list[Rejection] = []
        for start in range(0, len(records), _RECORDS_BETWEEN_YIELDS):
            if start:
                await asyncio.sleep(0)
            checked, refused = check_records(
                records[start : start + _RECORDS_BETWEEN_YIELDS],
                now=received_at,
                max_future_skew_seconds=skew,
                max_age_days=max_age_days,
                first_index=start,
            )
            valid += checked
            rejected += refused
        return CheckedBatch(received_at, valid, rejected)

    async def ingest(self, db: Database, *, records: list[object]) -> IngestResult:
        """``ingest_records`` in a transaction it opens and commits: of its own on PostgreSQL; on
        SQLite, one shared with the batches queued behind the same writer (``group_commit``)."""
        store = db.by_dialect(sqlite=self._store_with_queued_batches, postgresql=self._store_alone)
        result = await store(db, records)
        _count(result)
        return result

    async def _store_alone(self, db: Database, records: list[object]) -> IngestResult:
        """In a transaction of the batch's own: PostgreSQL runs concurrent writers side by side."""
        batch = await self.check_batch(records)
        async with db.session_scope() as session:
            return await self.store_checked(session, batch=batch)

    async def _store_with_queued_batches(self, db: Database, records: list[object]) -> IngestResult:
        """In a transaction shared with the batches queued behind the same writer: SQLite has one writer."""
        # The transaction is opened here rather than by the caller: it is not this request's alone.
        with group_commit.arriving(db):
            batch = await self.check_batch(records)
        return await group_commit.store_in_turn(db, batch, _store_checked)

    async def store_checked(self, session: AsyncSession, *, batch: CheckedBatch) -> IngestResult:
        """The database part of ``ingest_records``, in the caller's transaction; ``batch`` is left
        as it was, so a batch can be stored again after a rollback."""
        valid, rejected = batch.valid, list(batch.rejected)
        estimate_keys = {(r.provider, r.model) for r in valid if not r.custom_key}
        found = await usage_repository.lookup_batch(
            session,
            provider_ids={r.provider for r in valid},
            names={r.user for r in valid} | {r.bill_to for r in valid if r.bill_to},
            estimate_keys=estimate_keys,
        )
        accounts = found.accounts
        valid = _drop_org_users(_drop_unknown_providers(valid, found.providers, rejected), accounts, rejected)
        firsts, repeats = _split_repeats(valid)
        new_users = {r.user for r in firsts} - accounts.keys()
        if new_users:
            # Users never seen before are created on the free plan.
            await account_service.ensure_users(session, new_users)
            # Read back rather than assumed: a concurrent sync may have created one first.
            accounts.update((await usage_repository.lookup(session, provider_ids=(), names=new_users))[1])
        rows = await self._billing_rows(session, firsts, accounts)
        # Each row is inserted with its estimate; accounting then rewrites only those a hold attaches to.
        pricing = accounting.NewUsagePricing.of_lookup(found.providers, found.estimates, estimate_keys)
        estimate = pricing.estimate
        for row in rows:
            row.estimate_nano_usd = estimate(row)

        inserted = await usage_repository.insert_new(session, rows, received_at=batch.received_at)
        result = IngestResult(accepted=len(inserted), rejected=rejected)
        await self._judge_not_inserted(session, firsts, repeats, inserted, result)

        # The inserted rows themselves, with their ids, are what accounting reads.
        accepted = []
        for row in rows:
            id_ = inserted.get(row.key)
            if id_ is not None:
                row.id = id_
                accepted.append(row)
        if accepted:
            await accounting.account_for_new_usage(session, accepted, pricing=pricing, accounts=accounts)
        return result

    async def _judge_not_inserted(
        self,
        session: AsyncSession,
        firsts: list[ValidRecord],
        repeats: list[ValidRecord],
        inserted: dict[Key, int],
        result: IngestResult,
    ) -> None:
        """Records that did not insert are duplicates when their content equals the stored row's,
        else conflicts; a repeat within the batch is judged against whatever its key stored."""
        not_inserted = [r for r in firsts if r.key not in inserted] if len(inserted) < len(firsts) else []
        if not_inserted or repeats:
            stored = await usage_repository.stored_hashes(session, [r.key for r in not_inserted])
            stored.update({r.key: r.content_hash for r in firsts if r.key in inserted})
            for record in not_inserted + repeats:
                if stored.get(record.key) == record.content_hash:
                    result.duplicates += 1
                else:
                    result.rejected.append(Rejection(record.index, record.request_id, CONFLICT))
        result.rejected.sort(key=lambda rejection: rejection.index)

    async def _billing_rows(
        self, session: AsyncSession, records: list[ValidRecord], accounts: dict[str, AccountTerms]
    ) -> list[NewUsageRow]:
        """Who pays for each record: the bill_to org when valid now, else the user, flagged with why."""
        members = await usage_repository.memberships(
            session,
            {(r.bill_to, r.user) for r in records if r.bill_to in accounts and accounts[r.bill_to].kind == "org"},
        )
        refusals: dict[tuple[str, str], str | None] = {}
        rows: list[NewUsageRow] = []
        append = rows.append
        for r in records:
            user, bill_to, started_at = r.user, r.bill_to, r.started_at
            payer, reason = user, None
            if bill_to is not None:
                pair = (bill_to, user)
                if pair not in refusals:
                    org = accounts.get(bill_to)
                    refusals[pair] = bill_to_refusal(user=user, org=org, is_member=pair in members)
                reason = refusals[pair]
                if reason is None:
                    payer = bill_to
            # Positional, in NewUsageRow's field order: keywords cost a measurable share per record.
            # started_at is UTC already (validation), so its period needs no ``periods.period_of``.
            append(
                NewUsageRow(
                    r.provider,
                    r.request_id,
                    user,
                    bill_to,
                    payer,
                    reason,
                    r.model,
                    r.task,
                    r.custom_key,
                    started_at,
                    f"{started_at.year:04d}-{started_at.month:02d}",
                    r.duration_ms,
                    r.hardware,
                    r.input_tokens,
                    r.output_tokens,
                    r.hold_id,
                    r.content_hash,
                )
            )
        return rows


def _drop_unknown_providers(
    records: list[ValidRecord], known: Container[str], rejected: list[Rejection]
) -> list[ValidRecord]:
    kept = []
    for record in records:
        if record.provider in known:
            kept.append(record)
        else:
            rejected.append(
                Rejection(record.index, record.request_id, f"provider: unknown provider {record.provider!r}")
            )
    return kept


def _drop_org_users(
    records: list[ValidRecord], accounts: dict[str, AccountTerms], rejected: list[Rejection]
) -> list[ValidRecord]:
    """A record whose ``user`` names an org is rejected: only users make requests."""
    kept = []
    for record in records:
        account = accounts.get(record.user)
        if account is None or account.kind == "user":
            kept.append(record)
        else:
            rejected.append(
                Rejection(record.index, record.request_id, f"user: {record.user!r} is an organization, not a user")
            )
    return kept


def _split_repeats(records: list[ValidRecord]) -> tuple[list[ValidRecord], list[ValidRecord]]:
    """The first record of each key, and the later ones, which are judged against what gets stored."""
    seen: set[Key] = set()
    firsts, repeats = [], []
    for record in records:
        key = record.key
        if key in seen:
            repeats.append(record)
        else:
            seen.add(key)
            firsts.append(record)
    return firsts, repeats


def _count(result: IngestResult) -> None:
    metrics.records_ingested.labels(outcome="accepted").inc(result.accepted)
    metrics.records_ingested.labels(outcome="duplicate").inc(result.duplicates)
    metrics.records_ingested.labels(outcome="rejected").inc(len(result.rejected))


usage_service = UsageService()


async def _store_checked(session: AsyncSession, batch: CheckedBatch) -> IngestResult:
    return await usage_service.store_checked(session, batch=batch)
