"""Bodies of the webhook endpoint and delivery routes (SPEC §11)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from metering.models.webhooks import DELIVERY_STATUSES
from metering.webhooks.urls import MAX_URL_LENGTH

_ENDPOINT = {
    "id": 3,
    "url": "https://hooks.acme.example/metering",
    "description": "billing alerts to the ops channel",
    "created_at": "2026-12-07T09:00:00Z",
}


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://hooks.acme.example/metering", "description": "billing alerts to the ops channel"},
                {"url": "https://93.184.215.14/metering"},
            ]
        },
    )

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="An http or https URL of a public host (not loopback, private or link-local).",
    )
    description: str | None = Field(default=None, max_length=256)


class WebhookEndpointRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_ENDPOINT]})

    id: int
    url: str
    description: str | None
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointRead):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_ENDPOINT, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}
    )

    secret: str = Field(
        description="The endpoint's signing secret (Standard Webhooks, whsec_…). Shown only in this answer: keep it."
    )


class WebhookEndpointList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_ENDPOINT]}]})

    items: list[WebhookEndpointRead]


class WebhookDeliveryRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 41,
                    "webhook_id": "evt_5f0c3b1e9d7a4c2b8e6f1a0d3c5b7e9f",
                    "event_type": "credits.threshold",
                    "endpoint_id": 3,
                    "url": "https://hooks.acme.example/metering",
                    "status": "pending",
                    "attempts": 2,
                    "next_attempt_at": "2026-12-07T09:00:20Z",
                    "last_attempt_at": "2026-12-07T09:00:10Z",
                    "last_status_code": 503,
                    "last_error": "answered HTTP 503",
                    "delivered_at": None,
                    "created_at": "2026-12-07T09:00:00Z",
                }
            ]
        },
    )

    id: int
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt and replay.")
    event_type: str
    endpoint_id: int | None
    url: str | None
    status: str = Field(description=f"One of {', '.join(DELIVERY_STATUSES)}.")
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class WebhookDeliveryPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [], "next_cursor": None}]})

    items: list[WebhookDeliveryRead]
    next_cursor: int | None = Field(description="Pass as cursor for older deliveries; null on the last page.")
