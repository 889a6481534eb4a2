"""Request and response bodies of ``POST /internal/v1/authorize`` (SPEC §5.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.accounts import NAME_PATTERN

REASONS = Literal[
    "unknown_account",
    "not_a_member",
    "bill_to_not_eligible",
    "provider_disabled",
    "unknown_provider",
    "credits_exhausted",
    "spending_limit_reached",
    "account_delinquent",
]


class AuthorizeCreate(BaseModel):
    """Strict: a wrong type or an unknown field is a 422, never coerced."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "user": "alice",
                    "bill_to": "acme",
                    "provider": "together fireworks-ai",
                    "model": "org/name",
                    "custom_key": False,
                }
            ]
        },
    )

    user: str = Field(
        pattern=NAME_PATTERN, description="Who makes the request; unknown users are created on the free plan."
    )
    # Any header value is accepted: one naming no account is refused as unknown_account, not rejected.
    bill_to: str | None = Field(default=None, max_length=256, description="The X-HF-Bill-To header value, or null.")
    provider: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"\S",
        description="One provider id or several separated by spaces, preferred first.",
    )
    model: str = Field(min_length=1, max_length=256)
    custom_key: bool = False


class AuthorizeRead(BaseModel):
    allowed: bool
    billing_account: str | None = Field(description="Who pays; null when refused before a payer was settled.")
    providers: list[str] = Field(description="The allowed providers, in the caller's order; empty when refused.")
    reason: REASONS | None
    hold_id: str | None = Field(description="Send it back with the usage record; null when nothing is held.")
    credits_remaining_nano_usd: int | None = Field(
        description="After this request's hold; null when the decision read no money (custom key, early refusal)."
    )
    spending_limit_remaining_nano_usd: int | None = Field(description="Null when no spending limit applies.")
