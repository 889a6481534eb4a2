"""User-facing credentials: the platform's JWT (HS256 secret or RS256 public key) → a Principal.

Only the two configured algorithms are ever accepted, each with its own key, so a
token cannot pick its own verification (``alg: none``, or HS256 "signed" with the
public key). ``sub`` and ``exp`` are required; ``roles`` is optional.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import jwt

from metering.config import Settings
from metering.errors import Unauthenticated

ROLE_FINANCE = "finance"
ROLE_PLATFORM_ADMIN = "platform_admin"
KNOWN_ROLES = frozenset({ROLE_FINANCE, ROLE_PLATFORM_ADMIN})
# Clock skew tolerated between the platform that signs and this service.
LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user name and the platform roles it holds (unknown roles are dropped)."""

    user: str
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_platform_admin(self) -> bool:
        return ROLE_PLATFORM_ADMIN in self.roles

    @property
    def is_finance(self) -> bool:
        return ROLE_FINANCE in self.roles


def _verification_key(algorithm: str, settings: Settings) -> str:
    if algorithm == "RS256" and settings.jwt_public_key:
        return settings.jwt_public_key
    if algorithm == "HS256" and settings.jwt_secret:
        return settings.jwt_secret
    raise Unauthenticated("token algorithm not accepted")


def sign_token(settings: Settings, user: str, *, roles: Iterable[str] = (), ttl_seconds: int) -> str:
    """An HS256 token that ``decode_token`` accepts under ``settings``, for the embedded mode and tests.

    In production the platform signs; this process holds at most the HS256 secret it verifies with.
    ``exp`` is on the wall clock, which is what PyJWT checks it against.
    """
    if not settings.jwt_secret:
        raise ValueError("no HS256 secret to sign with (METERING_JWT_SECRET)")
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    roles = sorted(set(roles))
    unknown = set(roles) - KNOWN_ROLES
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; known: {sorted(KNOWN_ROLES)}")
    issued = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": issued, "exp": issued + ttl_seconds}
    if roles:
        claims["roles"] = roles
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def decode_token(token: str, settings: Settings) -> Principal:
    """Verify ``token`` and return its principal; any flaw is ``Unauthenticated``."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthenticated("malformed token") from exc
    algorithm = header.get("alg")
    if not isinstance(algorithm, str):
        raise Unauthenticated("token algorithm not accepted")
    key = _verification_key(algorithm, settings)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            options={"require": ["sub", "exp"], "verify_aud": False},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("invalid token") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token has no subject")
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise Unauthenticated("token roles must be a list of strings")
    return Principal(user=subject, roles=frozenset(roles) & KNOWN_ROLES)
