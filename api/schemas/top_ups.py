"""Prepaid top-ups bought through Stripe (SPEC §8)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from metering.money import NANO_PER_CENT
from metering.top_ups.service import MAX_TOP_UP_NANO_USD, MIN_TOP_UP_NANO_USD


class TopUpCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"amount_nano_usd": 20_000_000_000}]})

    amount_nano_usd: int = Field(
        strict=True,
        ge=MIN_TOP_UP_NANO_USD,
        le=MAX_TOP_UP_NANO_USD,
        multiple_of=NANO_PER_CENT,
        description="Prepaid credit to buy: a whole number of cents (a multiple of 10^7), from $0.50 to $100,000.",
    )


class TopUpRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "pi_3QxYzAbCdEf",
                    "client_secret": "pi_3QxYzAbCdEf_secret_Gh12",
                    "amount_nano_usd": 20_000_000_000,
                    "status": "pending",
                }
            ]
        }
    )

    id: str = Field(description="The Stripe PaymentIntent.")
    client_secret: str = Field(description="For Stripe.js to confirm the payment in the browser.")
    amount_nano_usd: int
    status: Literal["pending"] = Field(
        description="pending: credited once Stripe reports the payment succeeded (see the account's credit-grants)."
    )
