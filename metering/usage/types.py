"""Plain values passed between usage ingest and the billing services."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


# Not frozen: a frozen dataclass sets each field through object.__setattr__, a cost per record.
@dataclass(slots=True)
class AcceptedUsage:
    """A usage record just stored (status ``pending`` or ``custom_key``), as accounting reads it.

    Ingest itself hands accounting the rows it inserted (``NewUsageRow``, the same fields).
    """

    id: int
    provider_id: str
    request_id: str
    user_name: str
    billing_account: str
    model: str
    period: str
    started_at: datetime
    custom_key: bool
    hold_id: str | None
    duration_ms: int | None
    hardware: str | None
    input_tokens: int | None
    output_tokens: int | None
    # The estimate the row was inserted with (ingest writes it in the INSERT).
    estimate_nano_usd: int = 0


@dataclass(frozen=True, slots=True)
class PricedRequest:
    usage_record_id: int
    cost_nano_usd: int


@dataclass(frozen=True, slots=True)
class QuarantinedRequest:
    usage_record_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class SettleResult:
    """Counts of one ``settle`` call.

    ``replayed``: requests that were no longer pending (already settled the same way, or
    in another state), a no-op. ``conflicts``: already priced at a different cost; refused,
    never applied (the first price stands).
    """

    priced: int
    replayed: int
    quarantined: int
    unpriced: int
    conflicts: int = 0
