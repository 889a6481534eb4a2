"""Bodies of ``POST /internal/v1/usage`` (SPEC §5.2).

The route validates records with the hand-written checks of ``metering.usage.validation``
(faster, and a bad record must not fail the batch); these models document the contract in
the OpenAPI schema and describe the answer.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_RECORD = {
    "request_id": "req-7f3a9c",
    "provider": "together",
    "user": "alice",
    "bill_to": "acme",
    "model": "org/name",
    "task": "conversational",
    "custom_key": False,
    "started_at": "2026-11-22T05:00:00Z",
    "input_tokens": 1200,
    "output_tokens": 300,
}


class UsageRecordCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=256, description="The provider's request-id header value.")
    provider: str = Field(max_length=64, description="A registered provider id.")
    user: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", description="Who made the request.")
    bill_to: str | None = Field(default=None, max_length=96, description="The X-HF-Bill-To value.")
    model: str = Field(min_length=1, max_length=256)
    task: str | None = Field(default=None, max_length=64, examples=["conversational", "text-to-image"])
    custom_key: bool = False
    started_at: str = Field(description="RFC 3339 with a zone; at most 24 h in the future.")
    duration_ms: int | None = Field(default=None, ge=0, description="Needed for compute_time pricing.")
    hardware: str | None = Field(default=None, max_length=64, description="Needed for compute_time pricing.")
    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    hold_id: str | None = Field(default=None, max_length=36, description="From authorize.")


class UsageRejectionRead(BaseModel):
    index: int = Field(description="Position of the record in the request's records.")
    request_id: str | None
    error: str


class UsageIngestRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "accepted": 998,
                    "duplicates": 1,
                    "rejected": [{"index": 17, "request_id": "req-1", "error": "provider: unknown provider 'nope'"}],
                }
            ]
        }
    )

    accepted: int
    duplicates: int
    rejected: list[UsageRejectionRead]


def usage_request_body(max_records: int) -> dict:
    """The OpenAPI ``requestBody`` of the route (the body is read raw, so it is declared by hand)."""
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["records"],
                    "properties": {
                        "records": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": max_records,
                            "items": UsageRecordCreate.model_json_schema(),
                        }
                    },
                },
                "example": {"records": [EXAMPLE_RECORD]},
            }
        },
    }
