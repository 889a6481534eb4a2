"""A small reference router: the inference proxy Metering sits behind, as a FastAPI app.

``POST /v1/chat/completions`` with ``Authorization: Bearer <user token>``, an optional
``X-HF-Bill-To`` header, and a JSON body whose ``provider`` is one provider id or several
separated by spaces, preferred first. The router:

1. asks ``POST /internal/v1/authorize`` (user, bill_to, providers, model, custom key);
2. when refused, answers 402/403/400 with the reason; else forwards the body to the first
   allowed provider, with the platform's provider key (or the user's own, for a custom-key
   request) and ``X-HF-Bill-To`` passed on;
3. records usage through ``metering.hook``: the httpx event hook spools a record per provider
   response (request id from the provider's header, the hold id, the start time) and the
   background sender delivers the spool to Metering.

``started_at`` is stamped when the request arrives, before authorize, from
``metering.periods.utcnow`` (the demo's clock); a compute-time provider's
``X-Compute-Time``/``X-Compute-Type`` become the record's duration and hardware.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import httpx
import orjson
from fastapi import FastAPI, Request, Response

from metering.hook import BILL_TO_HEADER, MeteringHook, Spool, UsageSender, fetch_request_id_headers
from metering.periods import utcnow

# How a refusal reaches the client: payment problems are 402, permission problems 403.
REFUSAL_STATUS = {
    "credits_exhausted": 402,
    "spending_limit_reached": 402,
    "account_delinquent": 402,
    "not_a_member": 403,
    "bill_to_not_eligible": 403,
    "provider_disabled": 403,
    "unknown_account": 403,
    "unknown_provider": 400,
}
PROVIDER_HEADER = "X-Inference-Provider"
BILLING_ACCOUNT_HEADER = "X-Billing-Account"


@dataclass(frozen=True)
class RouterConfig:
    metering_url: str
    service_token: str
    # Where each provider serves, and the platform's own key for it.
    provider_urls: dict[str, str]
    provider_keys: dict[str, str]
    # User token → user name (the hub's access tokens).
    users: dict[str, str]
    spool_path: Path
    # user → {provider: the user's own key}. A request naming only such providers is a custom-key
    # request: forwarded with the user's key, recorded, never charged here.
    custom_keys: dict[str, dict[str, str]] = field(default_factory=dict)
    sender_interval_seconds: float = 0.5
    # False: the spool is delivered only by explicit ``sender.flush()`` calls (or ``sender.start()``
    # later), so records reach Metering at the same points of every run (the demo's month).
    background_delivery: bool = True


def _error(status: int, message: str, **extra: object) -> Response:
    body = orjson.dumps({"error": {"message": message, **extra}})
    return Response(body, status_code=status, media_type="application/json")


async def _read_compute_time(response: httpx.Response) -> None:
    """Runs before the metering hook: a compute-time provider's billed time and hardware go in the record."""
    meta = response.request.extensions.get("metering")
    seconds = response.headers.get("x-compute-time")
    if meta is None or seconds is None:
        return
    try:
        millis = int((Decimal(seconds) * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except InvalidOperation:
        return
    if millis >= 0:
        meta["duration_ms"] = millis
    hardware = response.headers.get("x-compute-type")
    if hardware:
        meta["hardware"] = hardware


class Router:
    """The request path; built by the app's lifespan around its clients, spool and sender."""

    def __init__(self, config: RouterConfig, metering: httpx.AsyncClient, providers: httpx.AsyncClient) -> None:
        self.config = config
        self.metering = metering
        self.providers = providers

    async def chat_completions(self, request: Request) -> Response:
        started_at = utcnow()
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        user = self.config.users.get(token)
        if user is None:
            return _error(401, "invalid or missing token")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "body must be JSON")
        if not isinstance(body, dict) or not all(isinstance(body.get(name), str) for name in ("model", "provider")):
            return _error(400, 'body needs "model" and "provider" (one id or a space-separated preference list)')
        bill_to = (request.headers.get(BILL_TO_HEADER) or "").strip() or None
        named = body["provider"].split()
        own_keys = self.config.custom_keys.get(user, {})
        custom_key = bool(named) and all(provider in own_keys for provider in named)

        decision = await self._authorize(user, bill_to, body["provider"], body["model"], custom_key)
        if decision is None:
            return _error(503, "billing is unavailable; try again")
        if not decision["allowed"]:
            reason = decision["reason"]
            return _error(
                REFUSAL_STATUS.get(reason, 403),
                f"refused: {reason}",
                reason=reason,
                billing_account=decision["billing_account"],
            )
        chosen = decision["providers"][0]
        if chosen not in self.config.provider_urls:
            return _error(502, f"no route to provider {chosen!r}")
        return await self._forward(
            body, chosen, decision, user=user, bill_to=bill_to, custom_key=custom_key, started_at=started_at
        )

    async def _authorize(
        self, user: str, bill_to: str | None, provider: str, model: str, custom_key: bool
    ) -> dict | None:
        payload = {"user": user, "bill_to": bill_to, "provider": provider, "model": model, "custom_key": custom_key}
        try:
            response = await self.metering.post("/internal/v1/authorize", json=payload)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    async def _forward(
        self,
        body: dict,
        chosen: str,
        decision: dict,
        *,
        user: str,
        bill_to: str | None,
        custom_key: bool,
        started_at: datetime,
    ) -> Response:
        key = self.config.custom_keys[user][chosen] if custom_key else self.config.provider_keys.get(chosen, "")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if bill_to:
            headers[BILL_TO_HEADER] = bill_to
        meta = {
            "provider_id": chosen,
            "user": user,
            "model": body["model"],
            "task": "conversational",
            "custom_key": custom_key,
            "hold_id": decision["hold_id"],
            "started_at": started_at,
        }
        forwarded = {name: value for name, value in body.items() if name != "provider"}
        try:
            answer = await self.providers.post(
                f"{self.config.provider_urls[chosen]}/v1/chat/completions",
                content=orjson.dumps(forwarded),
                headers=headers,
                extensions={"metering": meta},
            )
        except httpx.TransportError as exc:
            # No record: the hold expires after its TTL.
            return _error(502, f"provider {chosen} unreachable: {type(exc).__name__}")
        passed = {PROVIDER_HEADER: chosen, BILLING_ACCOUNT_HEADER: decision["billing_account"] or ""}
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
            headers=passed,
        )


def create_router_app(config: RouterConfig) -> FastAPI:
    """The router app; its lifespan opens the spool, starts the sender and reads the providers' id headers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config.spool_path.parent.mkdir(parents=True, exist_ok=True)
        spool = Spool(config.spool_path)
        metering = httpx.AsyncClient(
            base_url=config.metering_url, headers={"Authorization": f"Bearer {config.service_token}"}, timeout=30.0
        )
        sender = UsageSender(
            spool,
            config.metering_url,
            config.service_token,
            batch_size=500,
            interval=config.sender_interval_seconds,
            backoff_cap=5.0,
        )
        hook = MeteringHook(
            spool, request_id_headers=await fetch_request_id_headers(config.metering_url, metering), sender=sender
        )
        providers = httpx.AsyncClient(
            timeout=60.0, event_hooks={"request": [hook.on_request], "response": [_read_compute_time, hook.on_response]}
        )
        app.state.router = Router(config, metering, providers)
        app.state.hook, app.state.sender = hook, sender
        if config.background_delivery:
            sender.start()
        try:
            yield
        finally:
            await sender.stop(timeout=30.0)
            await providers.aclose()
            await metering.aclose()
            spool.close()

    app = FastAPI(title="Reference router", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await request.app.state.router.chat_completions(request)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    return app
