"""``GET /internal/v1/authorize/subrequest``: the authorize decision (SPEC §5.1) as a proxy's auth
subrequest (nginx ``auth_request``, Envoy ``ext_authz`` over HTTP), for routers that are not Python.

Such a subrequest carries the original request's headers and no body, and the proxy reads only
the answer's status and headers, so the request is read from headers and the decision is the
status: 200 allowed, 402 refused for payment, 403 refused for permission, with its fields in
response headers (the body is §5.1's answer, for people and logs). An entry point with a
transaction of its own, like ``POST /internal/v1/authorize``: each decision is one
(``metering.authorize.service``), not the request's session.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import Response

from api.deps import ServiceAuth
from api.errors import describe_validation_errors, error_body
from api.routes.authorize import decision_for, encode_decision
from api.schemas.authorize import AuthorizeCreate, AuthorizeRead
from api.schemas.errors import NO_SERVICE_TOKEN, ErrorRead, ValidationErrorRead
from metering.authorize.service import Decision

SUBREQUEST_PATH = "/internal/v1/authorize/subrequest"

# What the proxy tells (request headers), by the AuthorizeCreate field each one fills.
USER_HEADER = "X-Metering-User"
BILL_TO_HEADER = "X-HF-Bill-To"
PROVIDER_HEADER = "X-Metering-Provider"
MODEL_HEADER = "X-Metering-Model"
CUSTOM_KEY_HEADER = "X-Metering-Custom-Key"
HEADER_OF_FIELD = {
    "user": USER_HEADER,
    "bill_to": BILL_TO_HEADER,
    "provider": PROVIDER_HEADER,
    "model": MODEL_HEADER,
    "custom_key": CUSTOM_KEY_HEADER,
}

# What the decision tells (response headers); each is left out when its §5.1 field is null.
BILLING_ACCOUNT_HEADER = "X-Metering-Billing-Account"
HOLD_ID_HEADER = "X-Metering-Hold-Id"
PROVIDERS_HEADER = "X-Metering-Providers"
REASON_HEADER = "X-Metering-Reason"
CREDITS_REMAINING_HEADER = "X-Metering-Credits-Remaining-Nano-Usd"
LIMIT_REMAINING_HEADER = "X-Metering-Spending-Limit-Remaining-Nano-Usd"

# The refusal's status is the decision itself here, not an error of ``api.errors``' table: a proxy
# reads nothing else. Payment problems are 402, permission problems 403 (as the reference router
# answers its clients); a provider nobody registered is not the payer's to use, so 403 as well.
REFUSAL_STATUS = {
    "credits_exhausted": 402,
    "spending_limit_reached": 402,
    "account_delinquent": 402,
    "not_a_member": 403,
    "bill_to_not_eligible": 403,
    "provider_disabled": 403,
    "unknown_account": 403,
    "unknown_provider": 403,
}
# Headers the proxy must send, and the one that may say "true" or "false".
_REQUIRED = (USER_HEADER, PROVIDER_HEADER, MODEL_HEADER)
_BOOLEANS = {"true": True, "false": False}


class MalformedSubrequest(Exception):
    """The proxy's headers do not name an authorize request; ``issues`` says what to fix in its config."""

    def __init__(self, issues: list[dict]) -> None:
        super().__init__(describe_validation_errors(issues))
        self.issues = issues


def subrequest_fields(headers: Headers) -> AuthorizeCreate:
    """The authorize request the headers name, held to §5.1's own model (``AuthorizeCreate``).

    An empty ``X-HF-Bill-To`` is no bill-to, as the hook reads it; a header sent twice is refused
    rather than guessed between.
    """
    issues = []
    values: dict[str, object] = {}
    for field, header in HEADER_OF_FIELD.items():
        sent = headers.getlist(header)
        if len(sent) > 1:
            issues.append(_issue(header, f"sent {len(sent)} times; send it once", "repeated"))
        elif sent:
            values[field] = sent[0]
        elif header in _REQUIRED:
            issues.append(_issue(header, "missing; the proxy must send it", "missing"))
    if isinstance(bill_to := values.get("bill_to"), str):
        values["bill_to"] = bill_to.strip() or None
    if isinstance(custom_key := values.get("custom_key"), str):
        if custom_key.strip().lower() in _BOOLEANS:
            values["custom_key"] = _BOOLEANS[custom_key.strip().lower()]
        else:
            issues.append(_issue(CUSTOM_KEY_HEADER, f"must be true or false, got {custom_key!r}", "boolean"))
            del values["custom_key"]
    try:
        fields = AuthorizeCreate.model_validate(values)
    except ValidationError as invalid:
        named = {issue["loc"][1] for issue in issues}
        issues += [
            _issue(HEADER_OF_FIELD[str(error["loc"][0])], error["msg"], error["type"])
            for error in invalid.errors()
            if HEADER_OF_FIELD[str(error["loc"][0])] not in named
        ]
    if issues:
        raise MalformedSubrequest(issues)
    return fields


def _issue(header: str, message: str, kind: str) -> dict:
    return {"loc": ["header", header], "msg": message, "type": kind}


def decision_headers(decision: Decision) -> dict[str, str]:
    """The decision's fields as response headers, for ``auth_request_set`` or ``allowed_upstream_headers``."""
    headers = {}
    if decision.billing_account is not None:
        headers[BILLING_ACCOUNT_HEADER] = decision.billing_account
    if decision.hold_id is not None:
        headers[HOLD_ID_HEADER] = decision.hold_id
    if decision.providers:
        headers[PROVIDERS_HEADER] = " ".join(decision.providers)
    if decision.reason is not None:
        headers[REASON_HEADER] = decision.reason
    if decision.credits_remaining_nano_usd is not None:
        headers[CREDITS_REMAINING_HEADER] = str(decision.credits_remaining_nano_usd)
    if decision.spending_limit_remaining_nano_usd is not None:
        headers[LIMIT_REMAINING_HEADER] = str(decision.spending_limit_remaining_nano_usd)
    return headers


def _header_parameter(name: str, description: str, *, required: bool, example: str, **schema: object) -> dict:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", "examples": [example], **schema},
    }


_DECISION_HEADERS_DOC = {
    BILLING_ACCOUNT_HEADER: "Who pays; absent when refused before a payer was settled.",
    HOLD_ID_HEADER: "Send it back with the usage record (POST /internal/v1/usage); absent when nothing is held.",
    PROVIDERS_HEADER: "The allowed providers, space-separated, in the caller's order; absent when refused.",
    REASON_HEADER: "Why it was refused (a §5.1 reason); absent when allowed.",
    CREDITS_REMAINING_HEADER: "After this request's hold; absent when the decision read no money.",
    LIMIT_REMAINING_HEADER: "Absent when no spending limit applies.",
}


def _decision_response(description: str) -> dict:
    return {
        "model": AuthorizeRead,
        "description": description,
        "headers": {
            name: {"description": text, "schema": {"type": "string"}} for name, text in _DECISION_HEADERS_DOC.items()
        },
    }


router = APIRouter(prefix="/internal/v1", tags=["internal"], dependencies=[ServiceAuth])


@router.get(
    "/authorize/subrequest",
    summary="Authorize as a proxy's auth subrequest: the decision in the status and headers",
    response_model=AuthorizeRead,
    responses={
        200: _decision_response("Allowed; the decision's fields are in the X-Metering-* headers."),
        400: {
            "model": ValidationErrorRead,
            "description": "the proxy's headers name no valid authorize request (each problem named)",
        },
        401: {"model": ErrorRead, "description": NO_SERVICE_TOKEN},
        402: _decision_response("Refused for payment: credits_exhausted, spending_limit_reached, account_delinquent."),
        403: _decision_response(
            "Refused for permission: not_a_member, bill_to_not_eligible, provider_disabled, unknown_account, "
            "unknown_provider."
        ),
        503: {"model": ErrorRead, "description": "the database could not be reached or answer in time; ask again"},
    },
    openapi_extra={
        "parameters": [
            _header_parameter(
                USER_HEADER, "Who makes the request, as the proxy authenticated them.", required=True, example="alice"
            ),
            _header_parameter(
                BILL_TO_HEADER,
                "The client's X-HF-Bill-To; empty or absent: the user pays.",
                required=False,
                example="acme",
            ),
            _header_parameter(
                PROVIDER_HEADER,
                "One provider id or several separated by spaces, preferred first.",
                required=True,
                example="together",
            ),
            _header_parameter(MODEL_HEADER, "The model, org/name.", required=True, example="org/name"),
            _header_parameter(
                CUSTOM_KEY_HEADER,
                "true when the client brings its own provider key; absent: false.",
                required=False,
                example="false",
                enum=["true", "false"],
            ),
        ]
    },
)
async def authorize_subrequest(request: Request) -> Response:
    """Always a decision for well-formed headers: 200, 402 or 403, never a refusal in a 200's body.

    The same decision, hold and counters as ``POST /internal/v1/authorize``. nginx's
    ``auth_request`` passes 401 and 403 on and turns any other status into a 500, so the
    configuration in ``deploy/nginx/`` restores 402 from ``$upstream_status``.
    """
    return await _answer(request)


# Envoy's ext_authz (HTTP) asks with the original request's method, its path appended to the
# configured prefix: the same decision, under any method and below the documented path.
_OTHER_METHODS = ["POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@router.api_route("/authorize/subrequest", methods=_OTHER_METHODS, include_in_schema=False)
@router.api_route(
    "/authorize/subrequest/{original_path:path}", methods=["GET", *_OTHER_METHODS], include_in_schema=False
)
async def authorize_subrequest_any_method(request: Request) -> Response:
    return await _answer(request)


async def _answer(request: Request) -> Response:
    try:
        fields = subrequest_fields(request.headers)
    except MalformedSubrequest as malformed:
        body = error_body("ValidationError", str(malformed), errors=malformed.issues)
        return Response(orjson.dumps(body), status_code=400, media_type="application/json")
    decision = await decision_for(request.app.state.database, fields)
    status = 200 if decision.allowed else REFUSAL_STATUS.get(decision.reason or "", 403)
    return Response(
        encode_decision(decision), status_code=status, headers=decision_headers(decision), media_type="application/json"
    )
