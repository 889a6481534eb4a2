"""SQL of webhook endpoints and deliveries: fan-out of events, claims with a lease, attempt results, the log.

A delivery is claimed by writing a lease on its row (owner, expiry) in a short transaction
before it is sent; the attempt's result is written in another. A deliverer killed between
the two leaves the lease to lapse, and the delivery is claimed and sent again. Claims take at
most a few due deliveries per target, so one endpoint's backlog never fills a claim. The SQL
that differs between the engines (row locks skipped on PostgreSQL) is in
``repository_sqlite`` / ``repository_pg``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import by_dialect, upsert_insert
from metering.models import Event, WebhookDelivery, WebhookEndpoint
from metering.models.webhooks import PLATFORM_TARGET
from metering.sql import chunks, rowcount
from metering.webhooks.repository_pg import POSTGRES_DELIVERY_SQL
from metering.webhooks.repository_sqlite import SQLITE_DELIVERY_SQL

_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")
_delivery = WebhookDelivery.__table__
# Due deliveries a claim reads per delivery it may take.
_SCAN_PER_CLAIMED = 8


class DeliverySql(Protocol):
    """The SQL of deliveries that differs between the engines."""

    def skip_locked(self, statement: _Select) -> _Select:
        """``statement``, passing over rows other transactions hold locked."""
        ...


def _sql(session: AsyncSession) -> DeliverySql:
    return by_dialect(session, sqlite=SQLITE_DELIVERY_SQL, postgresql=POSTGRES_DELIVERY_SQL)


def endpoint_target(endpoint_id: int) -> str:
    return f"endpoint:{endpoint_id}"


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A leased delivery with what sending it needs."""

    id: int
    target: str
    attempts: int
    retry_until: datetime
    webhook_id: str
    event_type: str
    event_created_at: datetime
    body: str
    # None for the platform endpoint (its URL and secret come from the settings).
    endpoint_url: str | None
    endpoint_secret_encrypted: bytes | None


@dataclass(frozen=True, slots=True)
class Attempted:
    """One attempt's result, as written back: ``status`` is the delivery's new status."""

    id: int
    status: str
    at: datetime
    status_code: int | None
    error: str | None
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A delivery as the log shows it."""

    id: int
    webhook_id: str
    event_type: str
    endpoint_id: int | None
    url: str | None
    status: str
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class WebhookRepository:
    # -- endpoints

    def add_endpoint(self, session: AsyncSession, endpoint: WebhookEndpoint) -> None:
        session.add(endpoint)

    async def endpoints_of(self, session: AsyncSession, account: str) -> list[WebhookEndpoint]:
        """The account's endpoints not deleted, oldest first."""
        rows = await session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.account_name == account, WebhookEndpoint.deleted_at.is_(None))
            .order_by(WebhookEndpoint.id)
        )
        return list(rows)

    async def endpoint(self, session: AsyncSession, *, account: str, endpoint_id: int) -> WebhookEndpoint | None:
        """The account's endpoint of that id, deleted or not (another account's is None)."""
        return await session.scalar(
            select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.account_name == account)
        )

    async def give_up_pending(self, session: AsyncSession, *, endpoint_id: int, reason: str) -> int:
        """Mark the endpoint's pending deliveries failed (it was deleted)."""
        result = await session.execute(
            update(_delivery)
            .where(_delivery.c.endpoint_id == endpoint_id, _delivery.c.status == "pending")
            .values(status="failed", last_error=reason[:512], lease_owner=None, lease_until=None)
        )
        return rowcount(result)

    # -- the deliverer

    async def fan_out(
        self, session: AsyncSession, *, now: datetime, platform: bool, retry_until: datetime, limit: int
    ) -> int:
        """Turn up to ``limit`` events not yet fanned out into their deliveries; returns how many events.

        Each event goes to the platform endpoint (when ``platform``) and, unless it is for the
        platform only, to every endpoint of its account registered by the time it happened.
        Unique per (event, target), so two deliverers fanning out one event make one delivery.
        """
        statement = (
            select(Event.id, Event.account_name, Event.audience, Event.created_at)
            .where(Event.fanned_out_at.is_(None))
            .order_by(Event.id)
            .limit(limit)
        )
        events = (await session.execute(_sql(session).skip_locked(statement))).all()
        if not events:
            return 0
        accounts = sorted({account for _, account, audience, _ in events if audience == "account"})
        endpoints: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
        for part in chunks(accounts):
            rows = await session.execute(
                select(WebhookEndpoint.account_name, WebhookEndpoint.id, WebhookEndpoint.created_at)
                .where(WebhookEndpoint.account_name.in_(part), WebhookEndpoint.deleted_at.is_(None))
                .order_by(WebhookEndpoint.id)
            )
            for account, endpoint_id, created_at in rows:
                endpoints[account].append((endpoint_id, created_at))
        common = {
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "retry_until": retry_until,
            "created_at": now,
        }
        deliveries: list[dict[str, Any]] = []
        for event_id, account, audience, created_at in events:
            if platform:
                deliveries.append({"event_id": event_id, "target": PLATFORM_TARGET, "endpoint_id": None, **common})
            if audience != "account":
                continue
            for endpoint_id, registered_at in endpoints.get(account, ()):
                if registered_at <= created_at:
                    target = endpoint_target(endpoint_id)
                    deliveries.append({"event_id": event_id, "target": target, "endpoint_id": endpoint_id, **common})
        for rows_part in chunks(deliveries, 1_000):
            await session.execute(
                upsert_insert(session, WebhookDelivery)
                .values(rows_part)
                .on_conflict_do_nothing(index_elements=["event_id", "target"])
            )
        event_ids = [event_id for event_id, *_ in events]
        for ids in chunks(event_ids):
            await session.execute(update(Event).where(Event.id.in_(ids)).values(fanned_out_at=now))
        return len(events)

    def _due(self, *, now: datetime, pass_started: datetime) -> list[Any]:
        """Pending, due, not leased by a live deliverer, and not attempted yet in this pass."""
        return [
            _delivery.c.status == "pending",
            _delivery.c.next_attempt_at <= now,
            or_(_delivery.c.lease_until.is_(None), _delivery.c.lease_until < now),
            or_(_delivery.c.last_attempt_at.is_(None), _delivery.c.last_attempt_at < pass_started),
        ]

    async def claim_due(
        self,
        session: AsyncSession,
        *,
        owner: str,
        now: datetime,
        pass_started: datetime,
        lease_until: datetime,
        limit: int,
        per_target: int,
        skip_targets: Iterable[str] = (),
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries, at most ``per_target`` of each target (none of
        ``skip_targets``), the longest due first."""
        due = self._due(now=now, pass_started=pass_started)
        skip = sorted(set(skip_targets))
        if skip:
            due.append(_delivery.c.target.not_in(skip))
        # The longest due first, read along the (status, next_attempt_at) index and bounded: targets at
        # their share are in ``skip_targets``, so one target's backlog cannot fill the scan.
        scanned = (
            select(_delivery.c.id, _delivery.c.target, _delivery.c.next_attempt_at)
            .where(*due)
            .order_by(_delivery.c.next_attempt_at, _delivery.c.id)
            .limit(max(limit * _SCAN_PER_CLAIMED, _SCAN_PER_CLAIMED))
            .subquery()
        )
        ranked = select(
            scanned.c.id,
            scanned.c.next_attempt_at,
            func.row_number()
            .over(partition_by=scanned.c.target, order_by=(scanned.c.next_attempt_at, scanned.c.id))
            .label("rank"),
        ).subquery()
        candidates = list(
            await session.scalars(
                select(ranked.c.id)
                .where(ranked.c.rank <= per_target)
                .order_by(ranked.c.next_attempt_at, ranked.c.id)
                .limit(limit)
            )
        )
        if not candidates:
            return []
        # Read without locks, so checked again on each row as it is locked.
        lockable = _sql(session).skip_locked(select(_delivery.c.id).where(_delivery.c.id.in_(candidates), *due))
        claimed = await session.scalars(
            update(_delivery)
            .where(_delivery.c.id.in_(lockable))
            .values(lease_owner=owner, lease_until=lease_until)
            .returning(_delivery.c.id)
        )
        ids = sorted(claimed)
        if not ids:
            return []
        rows = await session.execute(
            select(
                _delivery.c.id,
                _delivery.c.target,
                _delivery.c.attempts,
                _delivery.c.retry_until,
                Event.webhook_id,
                Event.type,
                Event.created_at,
                Event.body,
                WebhookEndpoint.url,
                WebhookEndpoint.secret_encrypted,
            )
            .join(Event, Event.id == _delivery.c.event_id)
            .outerjoin(WebhookEndpoint, WebhookEndpoint.id == _delivery.c.endpoint_id)
            .where(_delivery.c.id.in_(ids))
            .order_by(_delivery.c.id)
        )
        return [ClaimedDelivery(*row) for row in rows]

    async def write_attempts(self, session: AsyncSession, *, owner: str, attempts: Sequence[Attempted]) -> None:
        """Write each attempt's result on its delivery, if still pending.

        A success is written even when the lease lapsed meanwhile (the receiver has it; another
        deliverer's attempt may still land, as at-least-once allows); a failure only while this
        deliverer holds the lease, so it never overwrites a newer attempt's schedule.
        """
        delivered = [attempt for attempt in attempts if attempt.status == "delivered"]
        other = [attempt for attempt in attempts if attempt.status != "delivered"]
        if delivered:
            await session.execute(
                update(_delivery)
                .where(_delivery.c.id == bindparam("b_id"), _delivery.c.status == "pending")
                .values(
                    status="delivered",
                    attempts=_delivery.c.attempts + 1,
                    last_attempt_at=bindparam("b_at"),
                    last_status_code=bindparam("b_code"),
                    last_error=None,
                    delivered_at=bindparam("b_at"),
                    lease_owner=None,
                    lease_until=None,
                ),
                [{"b_id": a.id, "b_at": a.at, "b_code": a.status_code} for a in delivered],
            )
        if other:
            await session.execute(
                update(_delivery)
                .where(
                    _delivery.c.id == bindparam("b_id"),
                    _delivery.c.status == "pending",
                    _delivery.c.lease_owner == owner,
                )
                .values(
                    status=bindparam("b_status"),
                    attempts=_delivery.c.attempts + 1,
                    next_attempt_at=bindparam("b_next"),
                    last_attempt_at=bindparam("b_at"),
                    last_status_code=bindparam("b_code"),
                    last_error=bindparam("b_error"),
                    lease_owner=None,
                    lease_until=None,
                ),
                [
                    {
                        "b_id": a.id,
                        "b_status": a.status,
                        "b_next": a.next_attempt_at,
                        "b_at": a.at,
                        "b_code": a.status_code,
                        "b_error": (a.error or "")[:512] or None,
                    }
                    for a in other
                ],
            )

    async def release(self, session: AsyncSession, *, owner: str, ids: Sequence[int]) -> None:
        """Give back leases of deliveries this deliverer claimed and did not attempt."""
        for part in chunks(list(ids)):
            await session.execute(
                update(_delivery)
                .where(_delivery.c.id.in_(part), _delivery.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    async def oldest_undelivered(self, session: AsyncSession) -> datetime | None:
        """When the oldest event still to be fanned out or delivered anywhere happened."""
        not_fanned = await session.scalar(select(func.min(Event.created_at)).where(Event.fanned_out_at.is_(None)))
        pending = await session.scalar(
            select(func.min(Event.created_at))
            .select_from(_delivery)
            .join(Event, Event.id == _delivery.c.event_id)
            .where(_delivery.c.status == "pending")
        )
        found = [moment for moment in (not_fanned, pending) if moment is not None]
        return min(found) if found else None

    # -- the delivery log

    def _log(self, account: str) -> Select[Any]:
        """Deliveries to the account's endpoints (deleted ones too), as the log shows them."""
        return (
            select(
                _delivery.c.id,
                Event.webhook_id,
                Event.type,
                _delivery.c.endpoint_id,
                WebhookEndpoint.url,
                _delivery.c.status,
                _delivery.c.attempts,
                _delivery.c.next_attempt_at,
                _delivery.c.last_attempt_at,
                _delivery.c.last_status_code,
                _delivery.c.last_error,
                _delivery.c.delivered_at,
                _delivery.c.created_at,
            )
            .join(WebhookEndpoint, WebhookEndpoint.id == _delivery.c.endpoint_id)
            .join(Event, Event.id == _delivery.c.event_id)
            .where(WebhookEndpoint.account_name == account)
        )

    async def deliveries_of(
        self, session: AsyncSession, *, account: str, limit: int, before_id: int | None, status: str | None
    ) -> list[DeliveryRow]:
        """The account's deliveries, newest first."""
        statement = self._log(account)
        if before_id is not None:
            statement = statement.where(_delivery.c.id < before_id)
        if status is not None:
            statement = statement.where(_delivery.c.status == status)
        rows = await session.execute(statement.order_by(_delivery.c.id.desc()).limit(limit))
        return [DeliveryRow(*row) for row in rows]

    async def delivery_of(self, session: AsyncSession, *, account: str, delivery_id: int) -> DeliveryRow | None:
        row = (await session.execute(self._log(account).where(_delivery.c.id == delivery_id))).one_or_none()
        return DeliveryRow(*row) if row is not None else None

    async def replay(self, session: AsyncSession, *, delivery_id: int, now: datetime, retry_until: datetime) -> None:
        """Send the delivery again from now, with a fresh retry window (same event, same ``webhook-id``)."""
        await session.execute(
            update(_delivery)
            .where(_delivery.c.id == delivery_id)
            .values(
                status="pending",
                next_attempt_at=now,
                retry_until=retry_until,
                delivered_at=None,
                lease_owner=None,
                lease_until=None,
            )
        )

    async def endpoint_deleted(self, session: AsyncSession, *, endpoint_id: int) -> bool:
        deleted_at = await session.scalar(select(WebhookEndpoint.deleted_at).where(WebhookEndpoint.id == endpoint_id))
        return deleted_at is not None


webhook_repository = WebhookRepository()
