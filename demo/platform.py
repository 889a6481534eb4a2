"""The hub's platform as Metering sees it: it syncs providers, accounts and members over the internal
routes (service token), and signs the JWTs with which users, org admins and finance call the API."""

from __future__ import annotations

import time
from collections.abc import Iterable

import httpx
import jwt
import orjson

TOKEN_TTL_SECONDS = 7 * 24 * 3600


def sign_token(secret: str, user: str, *, roles: Iterable[str] = (), ttl_seconds: int = TOKEN_TTL_SECONDS) -> str:
    """An HS256 platform JWT. ``exp`` follows the wall clock, not the demo's: PyJWT checks it against ``time.time``."""
    issued = int(time.time())
    claims = {"sub": user, "iat": issued, "exp": issued + ttl_seconds, "roles": list(roles)}
    return jwt.encode(claims, secret, algorithm="HS256")


class Platform:
    """Calls Metering's API; every call must succeed, so failures raise with the answer's detail."""

    def __init__(self, http: httpx.AsyncClient, *, metering_url: str, service_token: str, jwt_secret: str) -> None:
        self.http = http
        self.url = metering_url
        self.jwt_secret = jwt_secret
        self._service = {"Authorization": f"Bearer {service_token}"}
        self._finance = self.bearer("finance-demo", roles=("finance",))

    def bearer(self, user: str, *, roles: Iterable[str] = ()) -> dict[str, str]:
        return {"Authorization": f"Bearer {sign_token(self.jwt_secret, user, roles=roles)}"}

    async def _call(self, method: str, path: str, headers: dict[str, str], **kwargs: object) -> httpx.Response:
        response = await self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response

    # -- internal sync (SPEC §5.3) --------------------------------------------------------------

    async def put_provider(self, provider_id: str, registration: dict) -> None:
        await self._call("PUT", f"/internal/v1/providers/{provider_id}", self._service, json=registration)

    async def put_account(self, name: str, *, kind: str, plan: str, seats: int = 1) -> None:
        await self._call(
            "PUT", f"/internal/v1/accounts/{name}", self._service, json={"kind": kind, "plan": plan, "seats": seats}
        )

    async def put_member(self, org: str, user: str, role: str) -> None:
        await self._call("PUT", f"/internal/v1/orgs/{org}/members/{user}", self._service, json={"role": role})

    # -- user-facing settings, as the org admin (SPEC §8) ---------------------------------------

    async def set_spending_limit(self, account: str, limit_nano_usd: int | None, *, as_user: str) -> None:
        await self._call(
            "PUT",
            f"/v1/accounts/{account}/billing/spending-limit",
            self.bearer(as_user),
            json={"limit_nano_usd": limit_nano_usd},
        )

    async def set_disabled_providers(self, org: str, providers: list[str], *, as_user: str) -> None:
        await self._call(
            "PUT", f"/v1/orgs/{org}/billing/disabled-providers", self.bearer(as_user), json={"providers": providers}
        )

    # -- reads, as finance ----------------------------------------------------------------------

    async def billing(self, account: str, period: str) -> dict:
        response = await self._call("GET", f"/v1/accounts/{account}/billing", self._finance, params={"period": period})
        return response.json()

    async def invoices(self, account: str) -> list[dict]:
        response = await self._call("GET", f"/v1/accounts/{account}/invoices", self._finance)
        return response.json()["items"]

    async def export_rows(self, report: str, period: str) -> list[dict]:
        """A finance report of ``period`` as rows (its JSON Lines form)."""
        response = await self._call(
            "GET", f"/v1/finance/exports/{report}", self._finance, params={"period": period, "format": "jsonl"}
        )
        return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]
