"""User-facing usage: the time series and the request-level log of an account (SPEC §8)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Response

from api.auth import PrincipalDep
from api.deps import SessionDep, SettingsDep
from api.routes.billing import REFUSALS, AccountName, Limit, Period
from api.schemas.errors import error_responses
from api.schemas.usage_views import RequestPage, RequestRead, UsageSeriesRead
from metering.analytics.repository import UsageBucketRow
from metering.analytics.service import INTERVALS, UsageSeries, analytics_service
from metering.auth.policy import Action, access_policy

router = APIRouter(prefix="/v1", tags=["usage"])

_COUNT_FIELDS = ("requests", "priced_requests", "cost_nano_usd", "pending_requests", "custom_key_requests")


def _totals(rows: Sequence[UsageBucketRow]) -> dict[str, int]:
    return {field: sum(getattr(row, field) for row in rows) for field in _COUNT_FIELDS}


def series_body(series: UsageSeries) -> dict[str, Any]:
    """The response as ``UsageSeriesRead`` has it (its fields, in its order, by alias), in plain dicts.

    A large org's month is some ten thousand points: building and validating a model per point
    (here, then again by the response model) took longer than reading them from the database.
    ``tests/api/test_usage_series_body.py`` holds this to the model, byte for byte.
    """
    groups: dict[str, list[UsageBucketRow]] = {}
    for row in series.buckets:
        groups.setdefault(row.key, []).append(row)
    step = INTERVALS[series.interval]
    first = series.start.replace(minute=0, second=0, microsecond=0)
    if series.interval == "day":
        first = first.replace(hour=0)
    bucket_starts: list[datetime] = []
    moment = first
    while moment < series.end:
        bucket_starts.append(moment)
        moment += step
    return {
        "account": series.account,
        "from": series.start,
        "to": series.end,
        "interval": series.interval,
        "group_by": series.group_by,
        "buckets": bucket_starts,
        "series": [
            {
                "key": key,
                "points": [
                    {
                        "requests": row.requests,
                        "priced_requests": row.priced_requests,
                        "cost_nano_usd": row.cost_nano_usd,
                        "pending_requests": row.pending_requests,
                        "custom_key_requests": row.custom_key_requests,
                        "start": row.start,
                    }
                    for row in rows
                ],
                "totals": _totals(rows),
            }
            for key, rows in sorted(groups.items())
        ],
        "totals": _totals(series.buckets),
    }


def series_json(series: UsageSeries) -> bytes:
    """``series_body`` as JSON, written as pydantic writes the model (UTC as ``Z``)."""
    return orjson.dumps(series_body(series), option=orjson.OPT_UTC_Z)


@router.get(
    "/accounts/{name}/usage",
    response_model=UsageSeriesRead,
    summary="Usage time series",
    responses={
        **REFUSALS,
        **error_responses({422: "from/to unreadable, outside 1970-01-01..9998-12-31 or reversed, or too many buckets"}),
    },
)
async def get_usage(
    name: AccountName,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=64,
            description="Date or RFC 3339, from 1970-01-01 to 9998-12-31; default the period start.",
            examples=["2026-11-01"],
        ),
    ] = None,
    to: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Date (whole day included) or RFC 3339, from 1970-01-01 to 9998-12-31; not before 'from'.",
            examples=["2026-11-30T12:00:00Z"],
        ),
    ] = None,
    interval: Literal["day", "hour"] = "day",
    group_by: Annotated[
        Literal["member", "provider", "model"] | None,
        Query(description="Default: member for orgs, provider for users."),
    ] = None,
) -> Response:
    """Requests and priced cost per UTC day or hour, per member (orgs), provider or model.

    A series has at most ``usage_max_series_points`` buckets (9,600 by default: 400 days of hours).
    """
    start, end = analytics_service.resolve_range(
        start=from_, end=to, interval=interval, max_points=settings.usage_max_series_points
    )
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.READ_USAGE
    )
    series = await analytics_service.get_usage_series(
        session, account=account, start=start, end=end, interval=interval, group_by=group_by
    )
    # Written here as the response model would write it; returned as is, it is not validated again.
    return Response(content=series_json(series), media_type="application/json")


@router.get(
    "/accounts/{name}/requests",
    response_model=RequestPage,
    summary="Request-level log",
    responses={**REFUSALS, **error_responses({422: "bad cursor, limit or period"})},
)
async def list_requests(
    name: AccountName,
    principal: PrincipalDep,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page.")] = None,
    limit: Limit = 50,
    period: Period = None,
) -> RequestPage:
    """The requests billed to the account, newest first (keyset on started_at, id); all periods by default."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=name, action=Action.READ_REQUESTS
    )
    page = await analytics_service.list_requests(session, account=account, period=period, cursor=cursor, limit=limit)
    return RequestPage(
        items=[
            RequestRead(
                request_id=record.request_id,
                provider=record.provider_id,
                model=record.model,
                user=record.user_name,
                status=record.status,
                cost_nano_usd=record.cost_nano_usd,
                custom_key=record.custom_key,
                started_at=record.started_at,
            )
            for record in page.items
        ],
        next_cursor=page.next_cursor,
    )
