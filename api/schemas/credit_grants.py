"""Credit grants and prepaid credits (SPEC §8 "Finance operations")."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.billing import PeriodText

MAX_GRANT_NANO_USD = 10**15


class CreditGrantCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"amount_nano_usd": 5_000_000_000, "reason": "goodwill after an outage", "expires_period": "2027-03"}
            ]
        },
    )

    amount_nano_usd: int = Field(strict=True, gt=0, le=MAX_GRANT_NANO_USD)
    reason: str = Field(min_length=1, max_length=500, description="Why: kept in the audit trail.")
    expires_period: PeriodText | None = Field(
        default=None, description="The last period the grant pays in (YYYY-MM); null: it never expires."
    )


class CreditGrantRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "account": "acme",
                    "source": "grant",
                    "status": "active",
                    "amount_nano_usd": 5_000_000_000,
                    "remaining_nano_usd": 3_250_000_000,
                    "expires_period": "2027-03",
                    "reason": "goodwill after an outage",
                    "created_by": "fiona",
                    "created_at": "2026-12-07T04:00:00Z",
                }
            ]
        }
    )

    id: int
    account: str
    source: str = Field(description="grant (by finance) or prepaid (bought through Stripe).")
    status: str = Field(description="pending (a top-up not paid yet), active, or closed (used up, expired, refunded).")
    amount_nano_usd: int
    remaining_nano_usd: int
    expires_period: str | None
    reason: str
    created_by: str
    created_at: datetime


class CreditGrantList(BaseModel):
    items: list[CreditGrantRead]
