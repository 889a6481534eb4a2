"""``GET /billing/{account}``: the billing page, an HTML view of the §8 billing, usage and invoices routes.

Same JWT and the same object-level rules as the API (401/403/404 alike), answered as
HTML pages; the token may also come from the ``metering_token`` cookie, which a
one-time ``?token=`` link sets before redirecting to the clean URL.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from sqlalchemy.exc import DBAPIError
from starlette.responses import RedirectResponse, Response

from api.deps import SessionDep
from api.pages.auth import COOKIE_NAME, TOKEN_QUERY, authenticate, clear_token, store_token, verify_link_token
from api.pages.billing import gather_billing_page
from api.pages.render import SECURITY_HEADERS, error_page, render_page
from api.schemas.accounts import NAME_PATTERN
from metering.analytics.bounds import period_problem
from metering.db import statement_timeout_of
from metering.errors import InvalidInput, MeteringError, Unauthenticated

router = APIRouter(tags=["pages"], include_in_schema=False)

_NAME = re.compile(NAME_PATTERN)


def _check_query(account: str, period: str | None) -> None:
    """The API's path and query rules, answered as a 422 page rather than a JSON body."""
    if not _NAME.match(account):
        raise InvalidInput("account: letters, digits, '.', '_' or '-', at most 96 characters")
    problem = None if period is None else period_problem(period)
    if problem is not None:
        raise InvalidInput(problem)


def _accept_link_token(request: Request, token: str) -> Response:
    """A valid ``?token=`` becomes the cookie, and the browser is sent to the URL without it."""
    try:
        verify_link_token(request, token)
    except Unauthenticated as exc:
        return error_page(exc)
    url = request.url.remove_query_params(TOKEN_QUERY)
    location = f"{url.path}?{url.query}" if url.query else url.path
    response = RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)
    store_token(response, request, token)
    return response


@router.get("/billing/{account}")
async def billing_page(
    request: Request, account: str, session: SessionDep, period: str | None = None, token: str | None = None
) -> Response:
    """The account's billing page for ``period`` (default the current one)."""
    if token is not None:
        return _accept_link_token(request, token)
    try:
        principal = authenticate(request)
        _check_query(account, period)
        page = await gather_billing_page(session, principal=principal, account_name=account, period=period)
    except DBAPIError as exc:
        # Translated here rather than when the request's transaction ends, so it is a page too (503).
        timeout = statement_timeout_of(exc)
        if timeout is None:
            raise
        return error_page(timeout)
    except MeteringError as exc:
        response = error_page(exc)
        if isinstance(exc, Unauthenticated) and COOKIE_NAME in request.cookies:
            clear_token(response)
        return response
    return render_page("billing.html", page=page)
