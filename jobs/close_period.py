"""Job ``close-period``: close the previous period (or ``period``) after its grace window and invoice it."""

from __future__ import annotations

from datetime import datetime

from metering.db import Database
from metering.invoicing.service import invoicing_service


async def run_once(
    database: Database, *, period: str | None = None, force: bool = False, now: datetime | None = None
) -> str:
    """One close in one transaction: either the period is closed with all its invoices, or nothing changed."""
    async with database.session_scope() as session:
        result = await invoicing_service.close_period(session, period=period, force=force, now=now)
    return result.describe()
