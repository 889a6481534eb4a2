"""Events as stored in the outbox, for the alert and event tests."""

from __future__ import annotations

import orjson
from sqlalchemy import select

from metering.db import Database
from metering.models import Event


async def stored_events(db: Database, *types: str) -> list[tuple[str, str, str, dict]]:
    """(type, account, period, data) of every event (of ``types`` when given), in the order written."""
    async with db.session_scope() as session:
        statement = select(Event).order_by(Event.id)
        if types:
            statement = statement.where(Event.type.in_(types))
        rows = list(await session.scalars(statement))
    return [(e.type, e.account_name, e.period, orjson.loads(e.body)["data"]) for e in rows]
