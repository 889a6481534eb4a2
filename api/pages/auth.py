"""Credentials of a page: the platform JWT from the ``Authorization`` header or the ``metering_token`` cookie.

A browser sends no header on navigation, so a page link may carry ``?token=<JWT>``
once: the route checks it, stores it in an HttpOnly, SameSite=Strict cookie and
redirects to the same URL without it, so the token leaves the address bar and history.
The token is verified by the same ``decode_token`` as every API route.
"""

from __future__ import annotations

from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request
from starlette.responses import Response

from metering.auth.tokens import Principal, decode_token
from metering.errors import Unauthenticated

COOKIE_NAME = "metering_token"
TOKEN_QUERY = "token"
# Only the pages read the cookie; API routes keep asking for the header.
COOKIE_PATH = "/billing"


def presented_token(request: Request) -> str | None:
    """The bearer token of the header if any, else the cookie's."""
    header = request.headers.get("Authorization")
    if header:
        # A header that is not a bearer token is refused, as the API does, not passed over for the cookie.
        scheme, credentials = get_authorization_scheme_param(header)
        return credentials if scheme.lower() == "bearer" and credentials else None
    return request.cookies.get(COOKIE_NAME) or None


def authenticate(request: Request) -> Principal:
    """The page's caller; ``Unauthenticated`` when no valid token was presented."""
    token = presented_token(request)
    if token is None:
        raise Unauthenticated("a bearer token is required")
    return decode_token(token, request.app.state.settings)


def verify_link_token(request: Request, token: str) -> Principal:
    """Check a ``?token=`` before it is stored: a bad one never becomes a cookie."""
    return decode_token(token, request.app.state.settings)


def store_token(response: Response, request: Request, token: str) -> None:
    """A session cookie: the token's own ``exp`` still bounds it, checked on every request."""
    response.set_cookie(
        COOKIE_NAME,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_token(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")
