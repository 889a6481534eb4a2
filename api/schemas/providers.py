"""Provider registration (write) and the public provider view (read; never the token)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PROVIDER_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# The largest amount a BIGINT column holds.
MAX_NANO_USD = 2**63 - 1
# A non-negative amount or price that fits the columns it is stored in (a larger one is a 422,
# never a database error).
NanoUsd = Annotated[int, Field(ge=0, le=MAX_NANO_USD)]


class ModelPriceSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_nano_usd_per_million_tokens: NanoUsd
    output_nano_usd_per_million_tokens: NanoUsd


class ProviderUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://api.example.com",
                    "request_id_header": "Inference-Id",
                    "pricing": "cost_endpoint",
                    "cost_endpoint": "https://api.example.com/billing/costs",
                    "cost_token": "secret-token",
                    "credit_eligible": True,
                    "default_estimate_nano_usd": 100000,
                    "models": {
                        "org/name": {
                            "input_nano_usd_per_million_tokens": 200000000,
                            "output_nano_usd_per_million_tokens": 2000000000,
                        }
                    },
                }
            ]
        },
    )

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    request_id_header: str = Field(default="Inference-Id", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9-]+$")
    pricing: Literal["cost_endpoint", "compute_time"]
    cost_endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    cost_token: str | None = Field(default=None, min_length=1, max_length=4096, description="Write-only.")
    credit_eligible: bool = True
    default_estimate_nano_usd: NanoUsd = Field(default=0, strict=True)
    hardware_prices_nano_usd_per_second: dict[str, NanoUsd] = Field(default_factory=dict, strict=True)
    models: dict[str, ModelPriceSchema] = Field(default_factory=dict)


class ProviderRead(BaseModel):
    id: str
    url: str
    pricing: str
    request_id_header: str
    credit_eligible: bool
    models: dict[str, ModelPriceSchema]
