"""The one table from error class to HTTP status, and the handlers that render ``{"error", "detail"}``."""

from __future__ import annotations

import http

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import OrjsonResponse
from metering import errors
from metering.db import statement_timeout_of
from metering.invoicing.errors import InvalidWebhookSignature
from metering.reconciliation.errors import StatementTooLarge
from metering.top_ups.errors import StripeRefused

# Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: list[tuple[type[errors.MeteringError], int]] = [
    (errors.Unauthenticated, 401),
    (InvalidWebhookSignature, 400),
    (errors.NotFound, 404),
    (errors.Forbidden, 403),
    (StatementTooLarge, 413),
    (errors.InvalidInput, 422),
    (errors.Conflict, 409),
    (errors.StatementTimeout, 503),
    (errors.ServiceUnavailable, 503),
    (StripeRefused, 502),
]


def status_for(error: errors.MeteringError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


def error_body(error: str, detail: str, **extra: object) -> dict:
    return {"error": error, "detail": detail, **extra}


def describe_validation_errors(raw_errors: list[dict]) -> str:
    """``body.records.0.user: Field required; body: JSON decode error``: one line naming each problem."""
    parts = []
    for item in raw_errors:
        location = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid')}" if location else item.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


async def _metering_error(_request: Request, exc: errors.MeteringError) -> OrjsonResponse:
    return OrjsonResponse(error_body(type(exc).__name__, exc.detail), status_code=status_for(exc))


async def _database_error(request: Request, exc: Exception) -> OrjsonResponse:
    """A statement the server cancelled at its timeout outside ``Database.session_scope`` (which
    translates its own): answered as ``StatementTimeout``. Any other database error stays a 500."""
    timeout = statement_timeout_of(exc)
    if timeout is None:
        raise exc
    return await _metering_error(request, timeout)


async def _validation_error(_request: Request, exc: RequestValidationError) -> OrjsonResponse:
    raw = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    return OrjsonResponse(error_body("ValidationError", describe_validation_errors(raw), errors=raw), status_code=422)


async def _framework_error(_request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
    """The framework's own refusals (unknown path, wrong method, unreadable body) in the same body shape."""
    try:
        name = http.HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        name = "HTTPError"
    return OrjsonResponse(error_body(name, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.MeteringError, _metering_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.QueryCanceledError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _framework_error)
