"""``metering token USER [--role ROLE] [--minutes N]``: a short-lived JWT for the user-facing routes.

It is the embedded mode's stand-in for the platform: signed HS256 with the secret ``metering serve``
verifies with (``METERING_JWT_SECRET``, or the one generated into the data folder). Where user
tokens are RS256, only the platform's private key can sign them, and the command refuses.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from cli.errors import USAGE, CommandFailed

if TYPE_CHECKING:
    from metering.config import Settings

DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60


def signing_refusal(settings: Settings) -> str | None:
    """Why this process cannot sign a token ``metering serve`` would accept with ``settings``; ``None`` if it can.

    The embedded mode generates an HS256 secret even beside an RS256 public key; a token signed
    with that secret would be accepted, but it would bypass the platform the operator chose to
    trust, so only a secret given in ``METERING_JWT_SECRET`` signs there.
    """
    from pydantic_settings import EnvSettingsSource

    if settings.jwt_public_key and not EnvSettingsSource(type(settings))().get("jwt_secret"):
        return (
            "METERING_JWT_PUBLIC_KEY is set: user tokens are RS256, signed by the platform's private key, "
            "which this process does not have (set METERING_JWT_SECRET to sign HS256 tokens here)"
        )
    if not settings.jwt_secret:
        return "no METERING_JWT_SECRET to sign with"
    return None


def _check_user(value: str) -> str:
    from api.schemas.accounts import NAME_PATTERN  # the names the API accepts for users

    if not re.fullmatch(NAME_PATTERN, value):
        raise typer.BadParameter(f"not a user name: {value!r} (letters, digits, '.', '_', '-'; at most 96)")
    return value


def _check_roles(values: list[str] | None) -> list[str]:
    """``--role finance --role platform_admin`` or ``--role finance,platform_admin``."""
    from metering.auth.tokens import KNOWN_ROLES

    roles = [role.strip() for value in values or () for role in value.split(",") if role.strip()]
    unknown = [role for role in roles if role not in KNOWN_ROLES]
    if unknown:
        raise typer.BadParameter(f"unknown role {unknown[0]!r}; one of: {', '.join(sorted(KNOWN_ROLES))}")
    return sorted(set(roles))


def token(
    user: Annotated[str, typer.Argument(help="Who the token speaks for (its sub claim).", callback=_check_user)],
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            metavar="ROLE",
            callback=_check_roles,
            help="finance or platform_admin; repeat the option (or separate with commas) for both.",
        ),
    ] = None,
    minutes: Annotated[int, typer.Option(min=1, max=MAX_MINUTES, help="Lifetime in minutes.")] = DEFAULT_MINUTES,
) -> None:
    """Print a short-lived JWT for USER, accepted by `metering serve` on this machine's settings."""
    from metering.auth.tokens import sign_token
    from metering.config import get_settings

    settings = get_settings()
    refusal = signing_refusal(settings)
    if refusal is not None:
        raise CommandFailed(refusal, USAGE)
    roles = role or []
    typer.echo(sign_token(settings, user, roles=roles, ttl_seconds=minutes * 60))
    # The token alone goes to stdout, so that TOKEN=$(metering token alice) works; the how-to goes to stderr.
    if sys.stderr.isatty():
        held = f" with roles {', '.join(roles)}" if roles else ""
        typer.echo(
            f"A token for {user}{held}, valid {minutes} minutes: send it as 'Authorization: Bearer TOKEN', "
            f"or open /billing/{user}?token=TOKEN on `metering serve`.",
            err=True,
        )
