"""Finance exports (SPEC §8): one report of one period, streamed in constant memory.

An entry point with transactions of its own, not the request's session: the report is read
while it streams, after the route has returned (``metering.exports.repository``: one snapshot
on PostgreSQL, short keyset pages on SQLite).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.auth import PrincipalDep
from api.deps import DatabaseDep, SettingsDep
from api.routes.billing import Period
from api.schemas.errors import NO_PLATFORM_JWT, error_responses
from metering.auth.policy import access_policy
from metering.exports.service import export_service
from metering.periods import current_period

router = APIRouter(prefix="/v1/finance", tags=["finance"])

ReportName = Literal["ledger", "provider-payables", "receivables", "credits", "unpriced", "drift", "reconciliation"]
_CSV_EXAMPLE = (
    "provider_id,period,payable_nano_usd,entries\r\nfireworks-ai,2026-11,98000000,40\r\ntogether,2026-11,1200000,3\r\n"
)


@router.get(
    "/exports/{report}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The report, streamed; columns are listed in the first CSV row / every JSON line.",
            "content": {
                "text/csv": {"example": _CSV_EXAMPLE},
                "application/x-ndjson": {
                    "example": '{"provider_id":"together","period":"2026-11","payable_nano_usd":1200000,"entries":3}\n'
                },
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(
            {401: NO_PLATFORM_JWT, 403: "the finance role is needed", 422: "unknown report, format or period"}
        ),
    },
    summary="Finance export of one period",
)
async def export_report(
    report: ReportName,
    principal: PrincipalDep,
    db: DatabaseDep,
    settings: SettingsDep,
    period: Period = None,
    format: Annotated[Literal["csv", "jsonl", "parquet"], Query(description="Output format.")] = "csv",  # noqa: A002
) -> StreamingResponse:
    """ledger, provider-payables, receivables, credits, unpriced, drift or reconciliation, for finance. CSV cells
    are formula-safe."""
    access_policy.authorize_export(principal)
    period = period or current_period()
    _, media_type, filename = export_service.prepare(report=report, period=period, fmt=format)
    return StreamingResponse(
        # A report may take longer than an ordinary request: its transactions get the export timeout.
        export_service.stream_report(
            db.with_statement_timeout(settings.export_statement_timeout_ms), report=report, period=period, fmt=format
        ),
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )
