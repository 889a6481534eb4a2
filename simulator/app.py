"""The simulated provider as a FastAPI app: an inference route, the cost endpoint, and admin routes.

- ``POST /v1/chat/completions``: answers with an ``Inference-Id`` header and remembers the cost.
- ``POST /billing/costs``: the provider billing API, bearer-token protected, with faults.
- ``POST /_sim/faults`` (merge, or ``{"reset": true, ...}`` to start from none), ``GET /_sim/faults``.
- ``POST /_sim/costs`` ``{"costs": {id: nano}}`` or ``{"requestIds": [...]}``: preload served IDs.
- ``GET /_sim/stats``: calls and asks so far.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from email.utils import formatdate

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from simulator.state import SimulatorState


def _json(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json", headers=headers)


def create_simulator_app(state: SimulatorState | None = None) -> FastAPI:
    state = state or SimulatorState()
    app = FastAPI(title="Simulated inference provider", docs_url=None, redoc_url=None)
    app.state.sim = state

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if state.faults.inference_latency_seconds:
            await asyncio.sleep(state.faults.inference_latency_seconds)
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = {}
        request_id, _cost = state.serve_inference()
        model = body.get("model", "sim/model") if isinstance(body, dict) else "sim/model"
        answer = {
            "id": request_id,
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the simulator."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
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
