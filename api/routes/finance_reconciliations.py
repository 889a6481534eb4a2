"""Provider reconciliations (SPEC §8, finance): upload a provider's monthly statement, list the stored outcomes.

The upload reads its body as a stream and hands it to ``metering.reconciliation.service``, the
entry point that opens the transactions (one per batch of lines); the listing takes the
request's session.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from api.auth import PrincipalDep
from api.deps import DatabaseDep, SessionDep, SettingsDep
from api.schemas.billing import PeriodText
from api.schemas.errors import NO_PLATFORM_JWT, error_responses
from api.schemas.providers import PROVIDER_ID_PATTERN
from api.schemas.reconciliation import ReconciliationList, ReconciliationRead, ReconciliationSummaryRead
from metering.auth.policy import access_policy
from metering.reconciliation.service import reconciliation_service
from metering.reconciliation.statement import MAX_BYTES, MAX_LINES

router = APIRouter(prefix="/v1/finance", tags=["finance"])

# The upload's own cap on the body (``api.middleware.BodySizeLimit``), above the app's usual one.
STATEMENT_PATH_PREFIX = "/v1/finance/reconciliations/"
LARGE_BODIES = {STATEMENT_PATH_PREFIX: MAX_BYTES}

ProviderPath = Annotated[
    str, Path(pattern=PROVIDER_ID_PATTERN, max_length=64, description="A registered provider.", examples=["together"])
]
RequiredPeriod = Annotated[
    PeriodText,
    Query(
        description="YYYY-MM, from 1970-01 to 9998-12: the requests whose started_at falls in it.", examples=["2026-11"]
    ),
]
_STATEMENT_EXAMPLE = "request_id,cost_nano_usd\r\nreq-1,1200000\r\nreq-2,1300000\r\n"
_STATEMENT_BODY = {
    "required": True,
    "description": (
        "The provider's statement of the period as CSV: the header `request_id,cost_nano_usd`, then one line per "
        "request with its cost in integer nano-USD. LF or CRLF line ends; request ids quoted as CSV when they hold "
        f"a comma or a quote. At most {MAX_LINES} lines and {MAX_BYTES} bytes; streamed, never held whole."
    ),
    "content": {"text/csv": {"schema": {"type": "string"}, "example": _STATEMENT_EXAMPLE}},
}
_REFUSALS = {
    401: NO_PLATFORM_JWT,
    403: "the finance role is needed",
    422: "malformed query, or a bad statement line (the detail names it)",
    503: "the database could not answer in time; try again",
}


@router.post(
    "/reconciliations/{provider}",
    status_code=201,
    response_model=ReconciliationRead,
    openapi_extra={"requestBody": _STATEMENT_BODY},
    responses=error_responses(
        {
            **_REFUSALS,
            404: "no such provider",
            413: f"the statement has more than {MAX_LINES} lines or {MAX_BYTES} bytes",
        }
    ),
    summary="Reconcile a provider's statement with the ledger",
)
async def create_reconciliation(
    provider: ProviderPath,
    request: Request,
    principal: PrincipalDep,
    db: DatabaseDep,
    settings: SettingsDep,
    period: RequiredPeriod,
    reason: Annotated[
        str | None, Query(min_length=1, max_length=256, description="Why (kept with the reconciliation).")
    ] = None,
) -> ReconciliationRead:
    """Compare the statement with the costs posted for the provider's requests of the period; store and answer
    what differs. Lists hold the first 100 of each kind by request id; counts and totals are exact. Audited."""
    reconciliation_service.check_may_reconcile(principal)
    report = await reconciliation_service.reconcile(
        # A long statement takes longer than an ordinary request: its transactions get the export timeout.
        db.with_statement_timeout(settings.export_statement_timeout_ms),
        provider_id=provider,
        period=period,
        statement=request.stream(),
        actor=principal.user,
        reason=reason,
    )
    return ReconciliationRead.of_report(report)


@router.get(
    "/reconciliations",
    response_model=ReconciliationList,
    responses=error_responses(_REFUSALS),
    summary="Provider reconciliations of a period",
)
async def list_reconciliations(
    principal: PrincipalDep,
    session: SessionDep,
    period: RequiredPeriod,
    provider: Annotated[
        str | None, Query(pattern=PROVIDER_ID_PATTERN, max_length=64, description="Only this provider's.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, examples=[100])] = 100,
) -> ReconciliationList:
    """The period's stored reconciliations (summaries), by provider and newest first (finance, platform_admin)."""
    access_policy.authorize_export(principal)
    reconciliations = await reconciliation_service.list_reconciliations(
        session, period=period, provider_id=provider, limit=limit
    )
    return ReconciliationList(items=[ReconciliationSummaryRead.of(item) for item in reconciliations])
