"""The caller of a user-facing route: ``Authorization: Bearer <JWT>`` signed by the platform (SPEC §8)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from metering.auth.tokens import Principal, decode_token
from metering.errors import Unauthenticated

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="PlatformJWT",
    description="JWT from the platform: claims sub, exp, optional roles (finance, platform_admin).",
)


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("a bearer token is required")
    return decode_token(credentials.credentials, request.app.state.settings)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
