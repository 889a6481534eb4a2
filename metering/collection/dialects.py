"""Which kind of lease a collection batch can have on each engine (``metering.collection.batch_scope``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metering.collection.batch_scope import BatchLeases


class SqliteBatchLeases:
    """One writer at a time: no transaction may stay open while a provider is asked, so leases are written."""

    holds_rows = False


class PostgresBatchLeases:
    """A batch's transaction may stay open through its provider's answer, its row locks the lease."""

    holds_rows = True


sqlite_batch_leases: BatchLeases = SqliteBatchLeases()
postgres_batch_leases: BatchLeases = PostgresBatchLeases()
