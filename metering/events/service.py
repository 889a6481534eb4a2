"""The outbox: each event is a row written in the transaction of the change that causes it.

So an event exists exactly when its cause was committed, and is lost with it when that rolls
back. Each carries a ``dedupe_key`` naming its cause, unique in the table: a second write of
the same cause (concurrent postings crossing one threshold, a replayed Stripe webhook) is
ignored by the database, not by a check in Python. ``metering.webhooks`` delivers them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from metering.events.repository import event_repository
from metering.events.types import PLATFORM_ONLY
from metering.periods import utcnow


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to write: ``data`` is completed with ``account`` and ``period``."""

    type: str
    account: str
    period: str
    # The cause, unique across every event (e.g. ``invoice.created:42``).
    dedupe_key: str
    data: dict[str, Any] = field(default_factory=dict)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def event_body(event: NewEvent, *, at: datetime) -> str:
    """The payload of SPEC §11, ``{"type", "timestamp", "data": {"account", "period", ...}}``, as sent."""
    data = {"account": event.account, "period": event.period, **event.data}
    return orjson.dumps({"type": event.type, "timestamp": rfc3339(at), "data": data}).decode()


class EventService:
    async def emit(self, session: AsyncSession, events: Sequence[NewEvent], *, now: datetime | None = None) -> int:
        """Write ``events`` in the caller's transaction, each unless its cause already has one; returns how many were new."""
        if not events:
            return 0
        now = now or utcnow()
        # One row per cause even within a call; the unique index takes care of other transactions.
        unique = list({event.dedupe_key[:255]: event for event in events}.values())
        rows = [
            {
                "webhook_id": f"evt_{uuid.uuid4().hex}",
                "type": event.type,
                "account_name": event.account,
                "period": event.period,
                "dedupe_key": event.dedupe_key[:255],
                "audience": "platform" if event.type in PLATFORM_ONLY else "account",
                "body": event_body(event, at=now),
                "created_at": now,
            }
            for event in unique
        ]
        return await event_repository.insert_new(session, rows)


event_service = EventService()
