"""Usage ingest (SPEC §5.2): validate a batch, store new records idempotently, hand them to accounting.

One call is one transaction. Look-ups are per batch (sets of names), never per record, and
the INSERT is a single ON CONFLICT DO NOTHING statement, so a replay of the same batch, or
fifty concurrent ones, stores each record exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from metering import metrics
from metering.accounts.service import account_service, bill_to_refusal
from metering.config import get_settings
from metering.periods import utcnow
from metering.usage import accounting
from metering.usage.repository import AccountTerms, Key, NewUsageRow, usage_repository
from metering.usage.validation import Rejection, ValidRecord, check_records

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


class UsageService:
    async def ingest_records(self, session: AsyncSession, *, records: list[object]) -> IngestResult:
        """Store the valid, new records of one POST; name every other record as duplicate or rejected."""
        settings = get_settings()
        received_at = utcnow()
        valid, rejected = check_records(
            records, now=received_at, max_future_skew_seconds=settings.max_future_skew_seconds
        )
        providers, accounts = await usage_repository.lookup(
            session,
            provider_ids={r.provider for r in valid},
            names={r.user for r in valid} | {r.bill_to for r in valid if r.bill_to},
        )
        valid = _drop_org_users(_drop_unknown_providers(valid, providers, rejected), accounts, rejected)
        firsts, repeats = _split_repeats(valid)
        new_users = {r.user for r in firsts} - accounts.keys()
        if new_users:
            # Users never seen before are created on the free plan.
            await account_service.ensure_users(session, new_users)
            # Read back rather than assumed: a concurrent sync may have created one first.
            accounts.update((await usage_repository.lookup(session, provider_ids=(), names=new_users))[1])
        rows = await self._billing_rows(session, firsts, accounts)
        # Each row is inserted with its estimate; accounting then rewrites only those a hold attaches to.
        pricing = await accounting.price_new_usage(session, rows)
        for row in rows:
            row.estimate_nano_usd = pricing.estimate(row)

        inserted = await usage_repository.insert_new(session, rows, received_at=received_at)
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
        _count(result)
        return result

    async def _judge_not_inserted(
        self, session: AsyncSession, firsts: list[ValidRecord], repeats: list[ValidRecord],
        inserted: dict[Key, int], result: IngestResult,
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
            session, {(r.bill_to, r.user) for r in records if r.bill_to in accounts and accounts[r.bill_to].kind == "org"}
        )
        refusals: dict[tuple[str, str], str | None] = {}
        rows = []
        for r in records:
            reason = None
            if r.bill_to is not None:
                pair = (r.bill_to, r.user)
                if pair not in refusals:
                    # bill_to_refusal reads the org's kind and plan, which AccountTerms carries.
                    org = accounts.get(r.bill_to)
                    refusals[pair] = bill_to_refusal(user=r.user, org=org, is_member=pair in members)  # type: ignore[arg-type]
                reason = refusals[pair]
            rows.append(
                NewUsageRow(
                    provider_id=r.provider, request_id=r.request_id, user_name=r.user, bill_to=r.bill_to,
                    billing_account=r.bill_to if r.bill_to is not None and reason is None else r.user,
                    bill_to_flag_reason=reason, model=r.model, task=r.task, custom_key=r.custom_key,
                    started_at=r.started_at, period=_period(r.started_at), duration_ms=r.duration_ms,
                    hardware=r.hardware, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
                    hold_id=r.hold_id, content_hash=r.content_hash,
                )
            )
        return rows


def _drop_unknown_providers(
    records: list[ValidRecord], known: set[str], rejected: list[Rejection]
) -> list[ValidRecord]:
    kept = []
    for record in records:
        if record.provider in known:
            kept.append(record)
        else:
            rejected.append(Rejection(record.index, record.request_id, f"provider: unknown provider {record.provider!r}"))
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


def _period(started_at: datetime) -> str:
    """``periods.period_of`` of a timestamp validation already made UTC, without converting it again."""
    return f"{started_at.year:04d}-{started_at.month:02d}"


def _count(result: IngestResult) -> None:
    metrics.records_ingested.labels(outcome="accepted").inc(result.accepted)
    metrics.records_ingested.labels(outcome="duplicate").inc(result.duplicates)
    metrics.records_ingested.labels(outcome="rejected").inc(len(result.rejected))


usage_service = UsageService()
