"""Bodies of the billing summary, billing settings, invoices and audit routes (SPEC §8)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from api.schemas.providers import MAX_NANO_USD, PROVIDER_ID_PATTERN
from metering.analytics.bounds import PERIOD_REGEX, period_problem

PERIOD_PATTERN = PERIOD_REGEX
ProviderId = Annotated[str, Field(pattern=PROVIDER_ID_PATTERN, max_length=64)]


def _check_period(value: str) -> str:
    """A billing period a caller may ask about, or a validation error that says why not in words."""
    problem = period_problem(value)
    if problem is not None:
        raise PydanticCustomError("period", "{problem}", {"problem": problem})
    return value


# YYYY-MM from 1970-01 to 9998-12. Checked in code rather than by ``pattern``, whose refusal
# quotes the regular expression; the schema still documents the pattern.
PeriodText = Annotated[
    str, AfterValidator(_check_period), WithJsonSchema({"type": "string", "pattern": PERIOD_PATTERN})
]


class EstimateDriftRead(BaseModel):
    """How far the estimates behind holds and pending amounts were from the prices, for one model."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "provider": "together",
                    "model": "meta-llama/Llama-3.3-70B-Instruct",
                    "requests": 1200,
                    "mean_error_nano_usd": 13,
                    "p95_abs_error_nano_usd": 50,
                }
            ]
        },
    )

    provider: str
    model: str
    requests: int = Field(description="Priced requests of the period that had an estimate.")
    mean_error_nano_usd: int = Field(description="Mean of price - estimate, floor division (> 0: estimates low).")
    p95_abs_error_nano_usd: int = Field(description="Nearest-rank 95th percentile of |price - estimate|.")


class BillingRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account": "acme",
                    "kind": "org",
                    "plan": "team",
                    "seats": 5,
                    "period": "2026-11",
                    "status": "active",
                    "credits_granted_nano_usd": 10_000_000_000,
                    "credits_used_nano_usd": 10_000_000_000,
                    "credits_remaining_nano_usd": 0,
                    "payg_nano_usd": 1_234_567_890,
                    "written_off_nano_usd": 0,
                    "spending_limit_nano_usd": 50_000_000_000,
                    "disabled_providers": ["fireworks-ai"],
                    "pending_requests": 42,
                    "pending_estimate_nano_usd": 4_200_000,
                    "held_nano_usd": 300_000,
                    "prepaid_balance_nano_usd": 20_000_000_000,
                    "credit_grants_remaining_nano_usd": 0,
                    "adjustments_nano_usd": -500_000_000,
                    "estimate_drift": [
                        {
                            "provider": "together",
                            "model": "meta-llama/Llama-3.3-70B-Instruct",
                            "requests": 1200,
                            "mean_error_nano_usd": 13,
                            "p95_abs_error_nano_usd": 50,
                        }
                    ],
                }
            ]
        }
    )

    account: str
    kind: str
    plan: str
    seats: int
    period: str
    status: str
    credits_granted_nano_usd: int = Field(
        description="Credits of the period; before the grant is made, what the plan will grant (0 for past periods)."
    )
    credits_used_nano_usd: int
    credits_remaining_nano_usd: int
    payg_nano_usd: int = Field(description="Pay-as-you-go charged this period (credits exhausted).")
    written_off_nano_usd: int = Field(description="Cost no one will be invoiced for (free plan past its credits).")
    spending_limit_nano_usd: int | None = Field(description="Cap on the period's pay-as-you-go; null = none.")
    disabled_providers: list[str]
    pending_requests: int = Field(description="Requests of the period whose cost is not known yet.")
    pending_estimate_nano_usd: int
    held_nano_usd: int = Field(description="Estimates reserved by authorized requests not yet recorded.")
    estimate_drift: list[EstimateDriftRead] = Field(
        description="Per provider and model, the account's estimates against the prices of the period's priced requests."
    )
    prepaid_balance_nano_usd: int = Field(
        default=0, description="What is left now of the prepaid credits the account bought (any period)."
    )
    credit_grants_remaining_nano_usd: int = Field(
        default=0, description="What is left now of the credit finance granted the account (any period)."
    )
    adjustments_nano_usd: int = Field(
        default=0,
        description="Adjustments posted to the period, invoiced with it (carried credit included; < 0: in the "
        "account's favour).",
    )


class SpendingLimitUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"limit_nano_usd": 50_000_000_000}, {"limit_nano_usd": None}]},
    )

    limit_nano_usd: int | None = Field(
        strict=True, ge=0, le=MAX_NANO_USD, description="Cap on a period's pay-as-you-go; null removes it."
    )


class SpendingLimitRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"account": "acme", "spending_limit_nano_usd": 50_000_000_000}]}
    )

    account: str
    spending_limit_nano_usd: int | None


class DisabledProvidersUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"providers": ["fireworks-ai"]}]})

    providers: list[ProviderId] = Field(
        max_length=1_000, description="The complete set of providers switched off for the org; [] enables all."
    )

    def provider_ids(self) -> list[str]:
        return sorted(set(self.providers))


class DisabledProvidersRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"account": "acme", "disabled_providers": ["fireworks-ai"]}]}
    )

    account: str
    disabled_providers: list[str]


class InvoiceList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": 12,
                            "account": "acme",
                            "period": "2026-10",
                            "status": "sent",
                            "currency": "usd",
                            "amount_cents": 123,
                            "payg_nano_usd": 1_234_567_890,
                            "carried_in_nano_usd": 0,
                            "carried_out_nano_usd": 4_567_890,
                            "stripe_invoice_id": "in_123",
                            "created_at": "2026-11-03T00:00:00Z",
                            "lines": [],
                        }
                    ]
                },
                {"items": []},
            ]
        }
    )

    items: list[dict[str, Any]] = Field(
        description="Invoices of closed periods, newest first: amounts in nano-USD and the invoiced cents."
    )


class AuditEventRead(BaseModel):
    id: int
    actor: str = Field(description="Who made the change.")
    created_at: datetime = Field(description="When, RFC 3339 UTC.")
    action: str
    before: Any = Field(description="The setting before the change (JSON).")
    after: Any = Field(description="The setting after the change (JSON).")


class AuditPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": 7,
                            "actor": "alice",
                            "created_at": "2026-11-03T09:12:44Z",
                            "action": "set_spending_limit",
                            "before": {"limit_nano_usd": None},
                            "after": {"limit_nano_usd": 50_000_000_000},
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )

    items: list[AuditEventRead]
    next_cursor: str | None
