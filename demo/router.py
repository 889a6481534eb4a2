"""A small reference router: the inference proxy Metering sits behind, as a FastAPI app.

It speaks what OpenAI-compatible clients send (``openai``, ``huggingface_hub``'s
``InferenceClient``, curl): ``POST /v1/chat/completions`` with ``Authorization: Bearer <user
token>``, an optional ``X-HF-Bill-To`` header, and a JSON body whose ``model`` is ``org/name``
or ``org/name:provider``, or that names providers in a ``provider`` field (one id or several
separated by spaces, preferred first). A bare ``org/name`` goes to the providers that list the
model, in the router's order. ``GET /v1/models`` lists what the providers serve. The router:

1. asks ``POST /internal/v1/authorize`` (user, bill_to, providers, model, custom key);
2. when refused, answers 402/403/400 with an OpenAI-style error; else forwards the body (the
   provider suffix and field removed) to the first allowed provider, with the platform's
   provider key (or the user's own, for a custom-key request) and ``X-HF-Bill-To`` passed on;
3. records usage through ``metering_hook``: the httpx event hook spools a record per provider
   response (request id from the provider's header, the hold id, the start time) and the
   background sender delivers the spool to Metering.

``"stream": true`` is relayed chunk by chunk as server-sent events. A stream's record is spooled
once, when the stream ends however it ends (finished, cut by the provider, or dropped by the
client), with the token counts of the provider's last chunk when it sends them.

``started_at`` is stamped when the request arrives, before authorize, from
``metering.periods.utcnow`` (the demo's clock); a compute-time provider's
``X-Compute-Time``/``X-Compute-Type`` become the record's duration and hardware.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from fastapi import FastAPI, Request, Response
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from metering.periods import utcnow
from metering_hook import BILL_TO_HEADER, MeteringHook, Spool, UsageSender, fetch_request_id_headers

logger = logging.getLogger("demo.router")

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
# The ``type`` of an error body, by status, as OpenAI's clients expect it.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
PROVIDER_HEADER = "X-Inference-Provider"
BILLING_ACCOUNT_HEADER = "X-Billing-Account"
# A ``provider`` of "auto" (or none) lets the router choose among the providers listing the model.
AUTO = "auto"
# How long the providers' model lists are kept before they are asked again.
CATALOG_TTL_SECONDS = 30.0


@dataclass(frozen=True)
class RouterConfig:
    metering_url: str
    service_token: str
    # Where each provider serves, and the platform's own key for it; the order is the router's preference.
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


class ChatError(Exception):
    """A request the router answers itself, with an error body OpenAI's and Hugging Face's clients parse."""

    def __init__(self, status: int, message: str, code: str, **extra: object) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra

    def response(self) -> Response:
        kind = ERROR_TYPES.get(self.status, "api_error")
        body = orjson.dumps({"error": {"message": self.message, "type": kind, "code": self.code, **self.extra}})
        # huggingface_hub shows X-Error-Message in its own error's text, as the Hub's API sends it.
        headers = {"X-Error-Message": self.message.encode("ascii", "replace").decode()}
        return Response(body, status_code=self.status, media_type="application/json", headers=headers)


@dataclass(frozen=True)
class ChatRequest:
    """What a client asked for: the model without its provider suffix, the providers it named, preferred first."""

    model: str
    providers: tuple[str, ...]
    stream: bool
    # The body forwarded to the provider: the client's, with the bare model and no ``provider`` field.
    forwarded: dict[str, Any]


def parse_chat_body(raw: bytes) -> ChatRequest:
    """The client's body as a ``ChatRequest``; ``ChatError`` (400) saying what to fix when it is not one."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ChatError(400, "the body must be a JSON object", "invalid_json") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"].strip():
        raise ChatError(400, 'the body needs "model": "org/name" (or "org/name:provider")', "missing_model")
    model, _, suffix = body["model"].strip().partition(":")
    provider = body.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ChatError(
            400, '"provider" must be a string: one provider id or several separated by spaces', "bad_provider"
        )
    named = tuple(name for name in (provider or "").split() if name != AUTO)
    from_suffix = tuple(name for name in suffix.split() if name != AUTO)
    if named and from_suffix and named != from_suffix:
        raise ChatError(
            400,
            f'the model names provider {suffix!r} and "provider" names {provider!r}; name the provider once',
            "conflicting_provider",
        )
    forwarded = {name: value for name, value in body.items() if name != "provider"} | {"model": model}
    return ChatRequest(model, named or from_suffix, body.get("stream") is True, forwarded)


def _apply_compute_time(meta: dict[str, Any], headers: httpx.Headers) -> None:
    """A compute-time provider's billed time and hardware go in the record."""
    seconds = headers.get("x-compute-time")
    if seconds is None:
        return
    try:
        millis = int((Decimal(seconds) * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except InvalidOperation:
        return
    if millis >= 0:
        meta["duration_ms"] = millis
    hardware = headers.get("x-compute-type")
    if hardware:
        meta["hardware"] = hardware


async def _read_compute_time(response: httpx.Response) -> None:
    """Runs before the metering hook, so that the record it spools has the compute time."""
    meta = response.request.extensions.get("metering")
    if meta is not None:
        _apply_compute_time(meta, response.headers)


class StreamRecorder:
    """Spools the usage record of one streamed provider response exactly once, however the stream ends.

    The metering hook reads the provider's request-id header from ``upstream``; what the stream
    adds is the token counts of its ``usage`` chunk and the duration to its last byte (unless the
    provider billed a compute time).
    """

    def __init__(self, hook: MeteringHook, upstream: httpx.Response, started: float) -> None:
        self.hook = hook
        self.upstream = upstream
        self.meta: dict[str, Any] = upstream.request.extensions["metering"]
        self.started = started
        self.recorded = False
        self._partial = b""

    def observe(self, chunk: bytes) -> None:
        """Read the token counts of the chunk that carries ``usage`` (OpenAI sends it last, when asked)."""
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if b'"usage"' in line and line.startswith(b"data:"):
                self._read_usage(line[5:])

    def _read_usage(self, data: bytes) -> None:
        try:
            usage = orjson.loads(data).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not isinstance(usage, dict):
            return
        for ours, theirs in (("input_tokens", "prompt_tokens"), ("output_tokens", "completion_tokens")):
            value = usage.get(theirs)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self.meta[ours] = value

    def record(self) -> None:
        """Spool the record (synchronous, so a cancelled stream still gets it); later calls do nothing."""
        if self.recorded:
            return
        self.recorded = True
        self.meta["duration_ms"] = int((time.monotonic() - self.started) * 1000)
        _apply_compute_time(self.meta, self.upstream.headers)
        self.hook.record_response(self.upstream)

    async def close(self) -> None:
        self.record()
        with anyio.CancelScope(shield=True):
            await self.upstream.aclose()


class RecordedStreamingResponse(StreamingResponse):
    """A relayed stream whose record is spooled when the response ends, even when the client left mid-way.

    Starlette stops sending when the client disconnects and may leave the body generator suspended
    at a ``yield``; closing it here runs its ``finally``, and the recorder runs in any case.
    """

    def __init__(self, content: AsyncIterator[bytes], recorder: StreamRecorder, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.recorder.close()


def _sse_error(message: str, code: str) -> bytes:
    """An error event both clients raise on mid-stream (``huggingface_hub`` reads ``error_type``)."""
    event = {"error": {"message": message, "type": "api_error", "code": code}, "error_type": "incomplete_generation"}
    return b"data: " + orjson.dumps(event) + b"\n\n"


class Router:
    """The request path; built by the app's lifespan around its clients, hook, spool and sender."""

    def __init__(
        self,
        config: RouterConfig,
        metering: httpx.AsyncClient,
        providers: httpx.AsyncClient,
        *,
        streams: httpx.AsyncClient,
        hook: MeteringHook,
    ) -> None:
        self.config = config
        self.metering = metering
        # Non-streamed answers go through ``providers``, whose response hook spools each record;
        # streams through ``streams``, which only stamps the start: their record waits for the end.
        self.providers = providers
        self.streams = streams
        self.hook = hook
        self._catalog: dict[str, list[str]] = {}
        self._catalog_at = -CATALOG_TTL_SECONDS

    # -- models -----------------------------------------------------------------------------------

    async def catalog(self, *, fresh: bool = False) -> dict[str, list[str]]:
        """Model → the providers listing it in their ``GET /v1/models``, in the router's order.

        A provider that does not answer is left out until the next refresh.
        """
        if fresh or time.monotonic() - self._catalog_at > CATALOG_TTL_SECONDS:
            ids = list(self.config.provider_urls)
            answers = await asyncio.gather(*(self._models_of(pid) for pid in ids))
            catalog: dict[str, list[str]] = {}
            for provider_id, models in zip(ids, answers, strict=True):
                for model in models:
                    catalog.setdefault(model, []).append(provider_id)
            self._catalog, self._catalog_at = catalog, time.monotonic()
        return self._catalog

    async def _models_of(self, provider_id: str) -> list[str]:
        try:
            # Through the client without the response hook: a model list is not usage, not even unmetered.
            response = await self.streams.get(f"{self.config.provider_urls[provider_id]}/v1/models", timeout=5.0)
            response.raise_for_status()
            return [item["id"] for item in response.json()["data"] if isinstance(item.get("id"), str)]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("router: no model list from %s (%s)", provider_id, exc)
            return []

    async def models(self) -> Response:
        catalog = await self.catalog(fresh=True)
        data = [
            {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": model.partition("/")[0],
                "providers": [{"provider": provider, "status": "live"} for provider in providers],
            }
            for model, providers in sorted(catalog.items())
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    # -- chat completions -------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        try:
            return await self._chat(request)
        except ChatError as error:
            return error.response()

    async def _chat(self, request: Request) -> Response:
        started_at = utcnow()
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        user = self.config.users.get(token)
        if user is None:
            raise ChatError(
                401, "invalid or missing token: send Authorization: Bearer <your access token>", "invalid_api_key"
            )
        chat = parse_chat_body(await request.body())
        providers = chat.providers or tuple((await self.catalog()).get(chat.model, ()))
        if not providers:
            providers = tuple((await self.catalog(fresh=True)).get(chat.model, ()))
        if not providers:
            raise ChatError(
                404,
                f"no provider serves {chat.model!r}; GET /v1/models lists the models and their providers, "
                'or name one as "org/name:provider"',
                "model_not_found",
            )
        bill_to = (request.headers.get(BILL_TO_HEADER) or "").strip() or None
        own_keys = self.config.custom_keys.get(user, {})
        custom_key = all(provider in own_keys for provider in providers)

        decision = await self._authorize(user, bill_to, " ".join(providers), chat.model, custom_key)
        if decision is None:
            raise ChatError(503, "billing is unavailable; try again in a few seconds", "billing_unavailable")
        if not decision["allowed"]:
            reason = decision["reason"]
            raise ChatError(
                REFUSAL_STATUS.get(reason, 403),
                refusal_message(reason, user=user, bill_to=bill_to, providers=providers, decision=decision),
                reason,
                reason=reason,
                billing_account=decision["billing_account"],
            )
        chosen = decision["providers"][0]
        if chosen not in self.config.provider_urls:
            raise ChatError(502, f"no route to provider {chosen!r}", "provider_unreachable")
        key = own_keys[chosen] if custom_key else self.config.provider_keys.get(chosen, "")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if bill_to:
            headers[BILL_TO_HEADER] = bill_to
        meta = {
            "provider_id": chosen,
            "user": user,
            "model": chat.model,
            "task": "conversational",
            "custom_key": custom_key,
            "hold_id": decision["hold_id"],
            "started_at": started_at,
        }
        passed = {PROVIDER_HEADER: chosen, BILLING_ACCOUNT_HEADER: decision["billing_account"] or ""}
        url = f"{self.config.provider_urls[chosen]}/v1/chat/completions"
        content = orjson.dumps(chat.forwarded)
        if chat.stream:
            return await self._relay_stream(url, content, headers, meta, passed)
        try:
            answer = await self.providers.post(url, content=content, headers=headers, extensions={"metering": meta})
        except httpx.TransportError as exc:
            # No record: the hold expires after its TTL.
            raise ChatError(
                502, f"provider {chosen} unreachable: {type(exc).__name__}", "provider_unreachable"
            ) from exc
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
            headers=passed,
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

    async def _relay_stream(
        self, url: str, content: bytes, headers: dict[str, str], meta: dict[str, Any], passed: dict[str, str]
    ) -> Response:
        provider_id = meta["provider_id"]
        request = self.streams.build_request(
            "POST", url, content=content, headers=headers, extensions={"metering": meta}
        )
        started = time.monotonic()
        try:
            upstream = await self.streams.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ChatError(
                502, f"provider {provider_id} unreachable: {type(exc).__name__}", "provider_unreachable"
            ) from exc
        recorder = StreamRecorder(self.hook, upstream, started)
        if upstream.status_code >= 400:
            # The provider refused before streaming: its error body is passed on as it is.
            try:
                body = await upstream.aread()
            finally:
                await recorder.close()
            media_type = upstream.headers.get("content-type", "application/json")
            return Response(body, status_code=upstream.status_code, media_type=media_type, headers=passed)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_bytes():
                    recorder.observe(chunk)
                    yield chunk
            except httpx.TransportError as exc:
                yield _sse_error(
                    f"provider {provider_id} cut the stream ({type(exc).__name__}); the part received is billed",
                    "stream_interrupted",
                )
            finally:
                recorder.record()

        return RecordedStreamingResponse(
            relay(),
            recorder,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "text/event-stream"),
            headers=passed | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def refusal_message(
    reason: str, *, user: str, bill_to: str | None, providers: tuple[str, ...], decision: Mapping[str, Any]
) -> str:
    """What a refused client is told: why, and what would get the request through."""
    payer = decision.get("billing_account") or bill_to or user
    named = " ".join(providers)
    messages = {
        "credits_exhausted": (
            f"{payer} has no included credits left this month for this request, and its plan has no "
            "pay-as-you-go; upgrade to a plan with pay-as-you-go or wait for next month's credits"
        ),
        "spending_limit_reached": (
            f"{payer} reached its monthly spending limit; an admin of {payer} can raise it in the billing settings"
        ),
        "account_delinquent": f"{payer} has an unpaid invoice; pay it to resume requests",
        "not_a_member": (
            f"{user} is not a member of {bill_to}; ask an admin of {bill_to} to add you, "
            "or leave out bill_to (X-HF-Bill-To) to pay yourself"
        ),
        "bill_to_not_eligible": (
            f"{bill_to} cannot be billed for requests: only team and enterprise organizations accept "
            "bill_to (X-HF-Bill-To); leave it out to pay yourself"
        ),
        "provider_disabled": (
            f"{payer} has switched off {named}; an admin of {payer} can switch it on again, "
            "or name another provider (model 'org/name:provider')"
        ),
        "unknown_account": f"no billing account for {bill_to or user}",
        "unknown_provider": f"unknown provider in {named!r}; GET /v1/models lists the models and their providers",
    }
    return messages.get(reason, f"refused: {reason}")


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
        # The read timeout of a stream bounds the wait for each chunk, not the whole answer.
        streams = httpx.AsyncClient(timeout=60.0, event_hooks={"request": [hook.on_request]})
        app.state.router = Router(config, metering, providers, streams=streams, hook=hook)
        app.state.hook, app.state.sender = hook, sender
        if config.background_delivery:
            sender.start()
        try:
            yield
        finally:
            await sender.stop(timeout=30.0)
            await providers.aclose()
            await streams.aclose()
            await metering.aclose()
            spool.close()

    app = FastAPI(title="Reference router", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await request.app.state.router.chat_completions(request)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await request.app.state.router.models()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    return app
