"""Adjustments by finance (SPEC §8 "Finance operations")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from api.schemas.billing import PeriodText
from metering.adjustments.service import MAX_AMOUNT_NANO_USD, MAX_REASON, MAX_REQUEST_ID, MAX_REQUEST_IDS


def _not_zero(value: int) -> int:
    if value == 0:
        raise PydanticCustomError("not_zero", "an adjustment of 0 changes nothing: use a positive or negative amount")
    return value


RequestId = Annotated[str, Field(min_length=1, max_length=MAX_REQUEST_ID)]


class AdjustmentCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "amount_nano_usd": -500_000_000,
                    "reason": "provider outage: failed requests refunded",
                    "period": "2026-11",
                    "request_ids": ["req-81f2", "req-81f3"],
                }
            ]
        },
    )

    amount_nano_usd: Annotated[
        int,
        Field(
            strict=True,
            ge=-MAX_AMOUNT_NANO_USD,
            le=MAX_AMOUNT_NANO_USD,
            description="Not 0: > 0 is owed by the account, < 0 is in its favour (a refund or credit).",
        ),
        AfterValidator(_not_zero),
    ]
    reason: str = Field(min_length=1, max_length=MAX_REASON, description="Why: kept with it and in the audit trail.")
    period: PeriodText = Field(description="The period it corrects (YYYY-MM), not a future one.")
    request_ids: list[RequestId] | None = Field(
        default=None, max_length=MAX_REQUEST_IDS, description="The requests it is about, if any."
    )


class AdjustmentRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "account": "acme",
                    "amount_nano_usd": -500_000_000,
                    "period": "2026-12",
                    "corrects_period": "2026-11",
                    "reason": "provider outage: failed requests refunded",
                    "request_ids": ["req-81f2", "req-81f3"],
                    "created_by": "fiona",
                    "created_at": "2026-12-07T04:00:00Z",
                }
            ]
        }
    )

    id: int
    account: str
    amount_nano_usd: int
    period: str = Field(
        description="The period it is posted to and invoiced with: the one it corrects while that is still open, "
        "else the first open period after the latest closed one (the invoice made next)."
    )
    corrects_period: str
    reason: str
    request_ids: list[str]
    created_by: str
    created_at: datetime
