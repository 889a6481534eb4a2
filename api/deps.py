"""Request-scoped dependencies: the database, the request's transaction, the settings, and service-token
authentication."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from metering.config import Settings
from metering.db import Database
from metering.errors import Unauthenticated


async def get_database(request: Request) -> Database:
    return request.app.state.database


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's one transaction (``Database.session_scope``): committed once the route has
    returned, rolled back if it raised.

    Declared with ``scope="function"`` (``SessionDep``), so the commit runs before the response
    is sent: a failed commit is the request's error response (a cancelled statement is 503
    ``StatementTimeout``), never a 200 for a write that was not kept. The default scope of a
    dependency with ``yield`` would commit after the response had gone out.
    """
    async with request.app.state.database.session_scope() as session:
        yield session


_bearer = HTTPBearer(auto_error=False, description="Service token (internal routes)")


async def require_service_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Compares against every configured token in constant time; 401 otherwise.

    These dependencies are ``async`` only so FastAPI runs them inline rather than in its
    thread pool, a hand-off that costs more than the work itself.
    """
    if not is_service_token(credentials.credentials if credentials else "", request.app.state.service_tokens):
        raise Unauthenticated("a valid service token is required")


def is_service_token(presented: str, tokens: list[bytes]) -> bool:
    """Whether ``presented`` is one of ``tokens``, compared with every one in constant time."""
    presented_bytes = presented.encode()
    valid = False
    for token in tokens:
        valid |= hmac.compare_digest(presented_bytes, token)
    return valid


DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ServiceAuth = Depends(require_service_token)
