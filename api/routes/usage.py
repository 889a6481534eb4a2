"""The hook's delivery route, ``POST /internal/v1/usage`` (SPEC §5.2).

The body is read raw and parsed with orjson: ingest is the highest-volume route, and
building pydantic models for thousands of records per request would dominate its cost.

An entry point with a transaction of its own, not the request's session: ingest opens and
commits it itself, because on SQLite it is shared with the batches queued behind the same
writer (``metering.hot_path.group_commit``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import DatabaseDep, ServiceAuth, SettingsDep
from api.responses import OrjsonResponse
from api.schemas.errors import BODY_TOO_LARGE, NO_SERVICE_TOKEN, error_responses
from api.schemas.usage import UsageIngestRead, usage_request_body
from metering.config import Settings
from metering.usage.service import usage_service
from metering.usage.validation import parse_body

router = APIRouter(prefix="/internal/v1", tags=["internal"], dependencies=[ServiceAuth])

_DOCUMENTED_MAX_RECORDS = Settings.model_fields["max_records_per_post"].default


@router.post(
    "/usage",
    response_class=OrjsonResponse,
    summary="Record a batch of usage records",
    responses={
        200: {"model": UsageIngestRead, "description": "Counts, and every rejected record with its reason."},
        **error_responses({401: NO_SERVICE_TOKEN, 413: BODY_TOO_LARGE, 422: "The body as a whole is malformed."}),
    },
    openapi_extra={"requestBody": usage_request_body(_DOCUMENTED_MAX_RECORDS)},
)
async def post_usage(request: Request, db: DatabaseDep, settings: SettingsDep) -> OrjsonResponse:
    """Store a batch of usage records; idempotent on (provider, request_id)."""
    records = parse_body(await request.body(), max_records=settings.max_records_per_post)
    result = await usage_service.ingest(db, records=records)
    return OrjsonResponse(result.as_dict())
