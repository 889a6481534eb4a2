"""Create the monthly partitions ahead (this month and the next three) and give the rows that landed in
DEFAULT a partition of their own: one transaction per partition, failures logged and retried next run."""

from __future__ import annotations

import logging

from metering.db import Database
from metering.partitions.repository import PARTITIONED_TABLES, partition_name
from metering.partitions.service import partitions_service
from metering.periods import utcnow

logger = logging.getLogger(__name__)


async def run_once(database: Database) -> str:
    """Returns a one-line summary; on SQLite there is nothing to create."""
    now = utcnow()
    created: list[str] = []
    moved = failed = 0
    for table in PARTITIONED_TABLES:
        async with database.session_scope() as session:
            missing = await partitions_service.missing_months(session, table=table, now=now)
        for period in missing:
            try:
                async with database.session_scope() as session:
                    moved += await partitions_service.create_month(session, table=table, period=period)
            except Exception:  # a lock not granted in time, say: the next run tries again
                logger.exception("creating partition %s failed", partition_name(table, period))
                failed += 1
                continue
            created.append(partition_name(table, period))
    summary = f"created {len(created)} partitions" + (f" ({', '.join(created)})" if created else "")
    summary += f"; moved {moved} rows out of DEFAULT"
    return summary + (f"; {failed} failed" if failed else "")
