"""Bodies of the alert threshold routes (SPEC §8 "Alerts")."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from metering.config import MAX_ALERT_THRESHOLDS

Percent = Annotated[int, Field(strict=True, ge=1, le=100)]

_EXAMPLE = {"credits_percent": [50, 80, 100], "spending_limit_percent": [80, 100]}


class AlertsUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [_EXAMPLE, {"credits_percent": [], "spending_limit_percent": [90]}]},
    )

    credits_percent: list[Percent] = Field(
        max_length=MAX_ALERT_THRESHOLDS,
        description="Percentages of the period's included credits used that send credits.threshold; [] for none.",
    )
    spending_limit_percent: list[Percent] = Field(
        max_length=MAX_ALERT_THRESHOLDS,
        description="Percentages of the spending limit committed (charged plus in flight) that send "
        "spending_limit.threshold; [] for none.",
    )


class AlertsRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"account": "acme", **_EXAMPLE}]})

    account: str
    credits_percent: list[int] = Field(description="Sorted; the configured defaults until the account sets its own.")
    spending_limit_percent: list[int]
