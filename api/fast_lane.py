"""The authorize route's fast lane: its everyday request decided before FastAPI runs (hot path).

One of the hot path's shortcuts (see ``metering.hot_path``): it buys the framework's per-request
work on the route every routed request calls; ``bench/authorize.py`` measures it against the
trivial route, and ``tests/api/test_fast_lane.py`` holds it to the framework's answers.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import is_service_token
from api.errors import error_body, status_for
from api.routes.authorize import AUTHORIZE_PATH, decide
from api.schemas.authorize import AuthorizeCreate
from metering.errors import MeteringError

_JSON_HEADERS_WITHOUT_LENGTH = [(b"content-type", b"application/json")]


class AuthorizeFastLane:
    """ASGI middleware: the route's everyday request answered before FastAPI's middleware and request handling.

    FastAPI's per-request work (its middleware layers, routing, a ``Request``,
    dependency solving, body parsing and validation through its field machinery, exit
    stacks) costs the hot path several times the decision's own Python. A request to
    the route that is a POST with a valid service token, ``Content-Type:
    application/json`` and a ``Content-Length`` within the body limit, whose body
    parses and validates as ``AuthorizeCreate``, is decided here; any other request goes
    on to the app with its body replayed, so every refusal of the framework (400, 401,
    413, 422) is FastAPI's own, byte for byte. orjson accepts a subset of what the
    framework's parser accepts, with the same values, so both validate the same object
    with the same model. A refusal of the decision (``MeteringError``, e.g. 503) gets
    the body the app's handler gives it; any other error reaches the app's outermost
    layer, which answers 500, as it would from the endpoint.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != AUTHORIZE_PATH
            or scope["method"] != "POST"
            or not _fast_lane_headers(scope, self.max_bytes)
        ):
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        body = b""
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                await self.app(scope, _replay(received, receive), send)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            fields = AuthorizeCreate.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            await self.app(scope, _replay(received, receive), send)
            return
        status = 200
        try:
            payload = await decide(scope["app"].state.database, fields)
        except MeteringError as error:
            status, payload = status_for(error), orjson.dumps(error_body(type(error).__name__, error.detail))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(payload)).encode()), *_JSON_HEADERS_WITHOUT_LENGTH],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _fast_lane_headers(scope: Scope, max_bytes: int) -> bool:
    """A JSON body of a declared length within ``max_bytes``, and a service token as ``HTTPBearer`` and
    ``require_service_token`` read it."""
    authorization = content_type = length = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"content-length" and length is None:
            length = value
    if content_type != b"application/json" or length is None or not length.isdigit() or authorization is None:
        return False
    if int(length) > max_bytes:
        return False
    scheme, _, credentials = authorization.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    return (
        scheme.lower() == "bearer"
        and bool(credentials)
        and is_service_token(credentials, scope["app"].state.service_tokens)
    )


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` as it was before the fast lane read ``received`` from it."""
    pending = list(received)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
