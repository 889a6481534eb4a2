"""The simulated provider as a FastAPI app: an inference route, the cost endpoint, and admin routes.

- ``POST /v1/chat/completions``: answers with an ``Inference-Id`` header and remembers the cost; with
  ``"stream": true`` it answers server-sent events in OpenAI's chunk format, one token per chunk, the
  last one with ``usage`` when ``stream_options.include_usage`` asks for it.
- ``GET /v1/models``: the models it lists (``SimulatorState.models``).
- ``POST /billing/costs``: the provider billing API, bearer-token protected, with faults.
- ``POST /_sim/faults`` (merge, or ``{"reset": true, ...}`` to start from none), ``GET /_sim/faults``.
- ``POST /_sim/costs`` ``{"costs": {id: nano}}`` or ``{"requestIds": [...]}``: preload served IDs.
- ``GET /_sim/stats``: calls and asks so far.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from simulator.state import SimulatorState

# The reply, one token per streamed chunk; ``max_tokens`` makes it that many tokens long instead.
REPLY = ("Hello", " from", " the", " simul", "ator", ".")
PROMPT_TOKENS = 12


class StreamCut(Exception):
    """Raised inside a streamed answer so that the server drops the connection mid-body (fault ``cut_streams``)."""


def _reply(body: dict) -> tuple[list[str], str]:
    """The reply's tokens and finish reason: ``REPLY``, or exactly ``max_tokens`` tokens of it repeated."""
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return [REPLY[i % len(REPLY)] for i in range(limit)], "length"
    return list(REPLY), "stop"


def _include_usage(options: object) -> bool:
    return isinstance(options, dict) and options.get("include_usage") is True


def _chunks(request_id: str, model: str, tokens: list[str], finish_reason: str, usage: dict | None) -> list[bytes]:
    """The OpenAI chunks of a streamed reply: the role, one per token, the finish reason, then usage if asked."""
    head = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": token}) for token in tokens]
    chunks.append(chunk({}, finish_reason))
    if usage is not None:
        chunks.append({**head, "choices": [], "usage": usage})
    return [b"data: " + orjson.dumps(item) + b"\n\n" for item in chunks]


async def _sse(state: SimulatorState, chunks: list[bytes], *, cut: bool) -> AsyncIterator[bytes]:
    """Send ``chunks`` then ``[DONE]``, waiting the configured delay between chunks; a cut stream stops early."""
    for n, chunk in enumerate(chunks):
        if cut and n == state.faults.cut_after_chunks:
            raise StreamCut(f"simulated fault: stream cut after {n} chunks (cut_streams)")
        if n and state.faults.stream_chunk_delay_seconds:
            await asyncio.sleep(state.faults.stream_chunk_delay_seconds)
        yield chunk
    if cut:
        raise StreamCut(f"simulated fault: stream cut after {len(chunks)} chunks, before [DONE] (cut_streams)")
    yield b"data: [DONE]\n\n"


def _json(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json", headers=headers)


def create_simulator_app(state: SimulatorState | None = None) -> FastAPI:
    state = state or SimulatorState()
    app = FastAPI(title="Simulated inference provider", docs_url=None, redoc_url=None)
    app.state.sim = state

    @app.get("/v1/models")
    async def models() -> Response:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": model.partition("/")[0]}
            for model in state.models
        ]
        return _json({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if state.faults.inference_latency_seconds:
            await asyncio.sleep(state.faults.inference_latency_seconds)
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        request_id, _cost = state.serve_inference()
        model = body.get("model") if isinstance(body.get("model"), str) else "sim/model"
        tokens, finish_reason = _reply(body)
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(tokens),
            "total_tokens": PROMPT_TOKENS + len(tokens),
        }
        if body.get("stream") is True:
            options = body.get("stream_options")
            chunks = _chunks(request_id, model, tokens, finish_reason, usage if _include_usage(options) else None)
            return StreamingResponse(
                _sse(state, chunks, cut=state.take("cut_streams")),
                media_type="text/event-stream",
                headers={"Inference-Id": request_id, "Cache-Control": "no-cache"},
            )
        answer = {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
        return _json(answer, headers={"Inference-Id": request_id})

    @app.post("/billing/costs")
    async def billing_costs(request: Request) -> Response:
        presented = request.headers.get("authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {state.token}".encode()):
            return _json({"error": "unauthorized"}, status_code=401)
        state.cost_calls += 1
        faults = state.faults
        if faults.slow_seconds:
            await asyncio.sleep(faults.slow_seconds)
        if state.take("error_burst"):
            return _json({"error": "internal"}, status_code=faults.error_status)
        if state.take("rate_limit_burst"):
            headers = {}
            if faults.retry_after_seconds is not None:
                headers["Retry-After"] = (
                    str(faults.retry_after_seconds)
                    if faults.retry_after_format == "seconds"
                    else formatdate(time.time() + faults.retry_after_seconds, usegmt=True)
                )
            return _json({"error": "rate limited"}, status_code=429, headers=headers)
        try:
            asked = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json({"error": "body must be JSON"}, status_code=400)
        if not isinstance(asked, dict) or not isinstance(asked.get("requestIds"), list):
            return _json({"error": 'body must be {"requestIds": [...]}'}, status_code=400)
        body = state.answer_costs([rid for rid in asked["requestIds"] if isinstance(rid, str)])
        if state.take("truncated_json"):
            return Response(body[: max(len(body) // 2, 1)], media_type="application/json")
        if state.take("html_200"):
            return Response("<html><body><h1>Maintenance</h1></body></html>", media_type="text/html")
        if state.take("wrong_content_type"):
            return Response(body, media_type="text/plain")
        return Response(body, media_type="application/json")

    @app.get("/_sim/faults")
    async def get_faults() -> Response:
        return _json(state.faults.model_dump())

    @app.post("/_sim/faults")
    async def set_faults(request: Request) -> Response:
        changes = orjson.loads(await request.body() or b"{}")
        reset = bool(changes.pop("reset", False))
        try:
            faults = state.update_faults(changes, reset=reset)
        except ValueError as exc:
            return _json({"error": str(exc)}, status_code=422)
        return _json(faults.model_dump())

    @app.post("/_sim/costs")
    async def preload_costs(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        costs = body.get("costs") or {}
        if any(not isinstance(value, int) or isinstance(value, bool) for value in costs.values()):
            return _json({"error": "costs must be integers of nano-USD"}, status_code=422)
        known = state.preload(costs=costs, request_ids=body.get("requestIds") or [])
        return _json({"known": known})

    @app.get("/_sim/stats")
    async def stats() -> Response:
        return _json(
            {
                "cost_calls": state.cost_calls,
                "inference_calls": state.inference_calls,
                "known": len(state.costs),
                "asked_ids": sum(state.asks.values()),
                "asks": state.asks if len(state.asks) <= 10_000 else {},
            }
        )

    return app
