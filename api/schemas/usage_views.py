"""Bodies of the usage time series and the request log (SPEC §8)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

_COUNTS_EXAMPLE = {
    "requests": 120,
    "priced_requests": 117,
    "cost_nano_usd": 35_100_000,
    "pending_requests": 3,
    "custom_key_requests": 8,
}


class UsageCounts(BaseModel):
    requests: int = Field(description="Routed requests (billed through the platform); custom-key ones are not here.")
    priced_requests: int = Field(description="Routed requests whose provider cost is known.")
    cost_nano_usd: int = Field(description="Sum of the provider costs of the priced requests.")
    pending_requests: int = Field(description="Routed requests still waiting for their cost.")
    custom_key_requests: int = Field(
        description="Requests made with the user's own provider key: counted, never spend."
    )


class UsagePoint(UsageCounts):
    start: datetime = Field(description="Start of the UTC bucket (day or hour).")


class UsageGroup(BaseModel):
    key: str = Field(description="The member, provider or model this series is about.")
    points: list[UsagePoint] = Field(description="Non-empty buckets only, oldest first.")
    totals: UsageCounts


class UsageSeriesRead(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "account": "acme",
                    "from": "2026-11-01T00:00:00Z",
                    "to": "2026-11-03T00:00:00Z",
                    "interval": "day",
                    "group_by": "member",
                    "buckets": ["2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"],
                    "series": [
                        {
                            "key": "alice",
                            "points": [{"start": "2026-11-02T00:00:00Z", **_COUNTS_EXAMPLE}],
                            "totals": _COUNTS_EXAMPLE,
                        }
                    ],
                    "totals": _COUNTS_EXAMPLE,
                }
            ]
        },
    )

    account: str
    from_: datetime = Field(alias="from", description="Start of the range (inclusive).")
    to: datetime = Field(description="End of the range (exclusive): a date given as 'to' includes its whole day.")
    interval: str
    group_by: str
    buckets: list[datetime] = Field(description="Every bucket start of the range, so clients can draw zeros.")
    series: list[UsageGroup]
    totals: UsageCounts


class RequestRead(BaseModel):
    request_id: str
    provider: str
    model: str
    user: str
    status: str = Field(description="pending, priced, custom_key, unpriced or quarantined.")
    cost_nano_usd: int | None = Field(description="The provider's cost once priced; null before, and for custom keys.")
    custom_key: bool
    started_at: datetime


class RequestPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "request_id": "5b0c1c1e-6f4e-4a55-9d53-2f0d8c2f2a11",
                            "provider": "together",
                            "model": "meta-llama/Llama-3.3-70B-Instruct",
                            "user": "alice",
                            "status": "priced",
                            "cost_nano_usd": 1_200_000,
                            "custom_key": False,
                            "started_at": "2026-11-02T10:15:00Z",
                        }
                    ],
                    "next_cursor": "WyIyMDI2LTExLTAyVDEwOjE1OjAwKzAwOjAwIiw0Ml0",
                }
            ]
        }
    )

    items: list[RequestRead]
    next_cursor: str | None = Field(description="Pass as 'cursor' for the next (older) page; null on the last page.")
