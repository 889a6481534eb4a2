"""The rows usage's SQL takes and gives back, the same whichever engine's implementation runs it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

Key = tuple[str, str]  # (provider_id, request_id)

# Columns the ingest writes, in the order of NewUsageRow's fields.
INSERT_COLUMNS = (
    "provider_id",
    "request_id",
    "user_name",
    "bill_to",
    "billing_account",
    "bill_to_flag_reason",
    "model",
    "task",
    "custom_key",
    "started_at",
    "period",
    "duration_ms",
    "hardware",
    "input_tokens",
    "output_tokens",
    "hold_id",
    "content_hash",
    "estimate_nano_usd",
)
# Written with the same value on every new row (status follows custom_key).
FIXED_COLUMNS = ("bill_to_flagged", "status", "received_at", "attempts", "next_attempt_at")


@dataclass(slots=True)
class NewUsageRow:
    """One usage record ready for the INSERT; everything the ingest decides is already in it."""

    provider_id: str
    request_id: str
    user_name: str
    bill_to: str | None
    billing_account: str
    bill_to_flag_reason: str | None
    model: str
    task: str | None
    custom_key: bool
    started_at: datetime
    period: str
    duration_ms: int | None
    hardware: str | None
    input_tokens: int | None
    output_tokens: int | None
    hold_id: str | None
    content_hash: str
    # Written in the INSERT: the estimate the record gets unless a hold is attached to it.
    estimate_nano_usd: int = 0
    # The id the INSERT gave the row (0 until then): ingest hands inserted rows to accounting as they are.
    id: int = 0

    @property
    def key(self) -> Key:
        return self.provider_id, self.request_id


@dataclass(frozen=True, slots=True)
class SettledRow:
    """A record that just left ``pending``, with what accounting needs to move its money."""

    id: int
    billing_account: str
    provider_id: str
    model: str
    period: str
    estimate_nano_usd: int
