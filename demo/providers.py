"""The demo's inference providers, all the project's simulator (``simulator/``) on loopback.

- ``together`` and ``fireworks-ai`` price through their cost endpoints, with the faults of
  ``FaultPlan`` injected on given days of the month;
- ``hf-inference`` is priced by compute time: its simulator also answers, like the real
  service, ``X-Compute-Time`` (seconds) and ``X-Compute-Type`` (hardware), drawn per request
  from the model's hardware and time range. The router turns them into the usage record's
  ``duration_ms`` and ``hardware``. Compute times are simulated; the HTTP answer itself only
  waits ``latency_seconds``, which is how a month fits in seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import orjson
from fastapi import FastAPI, Request, Response

from demo import DEFAULT_SEED
from demo.servers import LoopbackServer
from simulator.app import create_simulator_app
from simulator.state import SimulatorState

HF_INFERENCE = "hf-inference"
CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct"
SMALL_MODEL = "HuggingFaceTB/SmolLM3-3B"
MID_MODEL = "Qwen/Qwen2.5-7B-Instruct"

# Integer nano-USD per second of each hf-inference hardware.
HARDWARE_PRICES = {"cpu-basic": 120_000, "gpu-a10g": 1_000_000, "gpu-h100": 2_800_000}
# hf-inference model → (hardware, shortest and longest compute time in ms).
HF_MODELS = {
    SMALL_MODEL: ("cpu-basic", 1_500, 6_000),
    MID_MODEL: ("gpu-a10g", 2_000, 8_000),
    CHAT_MODEL: ("gpu-h100", 20_000, 60_000),
}


@dataclass(frozen=True)
class ProviderSpec:
    id: str
    pricing: str
    latency_seconds: float
    default_estimate_nano_usd: int
    # What its ``GET /v1/models`` lists, and so what the router's does; a request may still name others.
    models: tuple[str, ...] = (CHAT_MODEL, SMALL_MODEL)


# Latencies are a token wait: the month's requests go one after another, so they add up.
PROVIDERS = (
    ProviderSpec("together", "cost_endpoint", latency_seconds=0.003, default_estimate_nano_usd=300_000),
    ProviderSpec("fireworks-ai", "cost_endpoint", latency_seconds=0.002, default_estimate_nano_usd=300_000),
    ProviderSpec(
        HF_INFERENCE,
        "compute_time",
        latency_seconds=0.004,
        default_estimate_nano_usd=5_000_000,
        models=tuple(HF_MODELS),
    ),
)
COST_ENDPOINT_PROVIDERS = tuple(spec.id for spec in PROVIDERS if spec.pricing == "cost_endpoint")


def provider_seed(seed: int, provider_id: str) -> int:
    """The simulator seed of one provider in a demo run of ``seed``: request IDs and costs follow from it."""
    digest = hashlib.blake2b(f"{seed}:{provider_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def compute_time_ms(seed: int, request_id: str, low_ms: int, high_ms: int) -> int:
    """A compute time in [low_ms, high_ms], fixed by the seed and the request id."""
    digest = hashlib.blake2b(f"{seed}:compute:{request_id}".encode(), digest_size=8).digest()
    return low_ms + int.from_bytes(digest, "big") % (high_ms - low_ms + 1)


def with_compute_time(app: FastAPI, seed: int) -> FastAPI:
    """Add hf-inference's compute headers to the simulator's chat answers."""

    @app.middleware("http")
    async def compute_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path != "/v1/chat/completions":
            return await call_next(request)
        try:
            model = orjson.loads(await request.body() or b"{}").get("model")
        except (orjson.JSONDecodeError, AttributeError):
            model = None
        response = await call_next(request)
        request_id = response.headers.get("inference-id")
        hardware, low_ms, high_ms = HF_MODELS.get(model, HF_MODELS[SMALL_MODEL])
        if request_id:
            millis = compute_time_ms(seed, request_id, low_ms, high_ms)
            response.headers["X-Compute-Time"] = f"{millis // 1000}.{millis % 1000:03d}"
            response.headers["X-Compute-Type"] = hardware
        return response

    return app


class SimulatedProvider:
    """One simulator server and the registration Metering gets for it.

    The simulator draws request IDs from its seed in the order requests arrive, and a cost
    (or a compute time) is a function of the ID: the same requests in the same order cost
    the same under the same seed.
    """

    def __init__(self, spec: ProviderSpec, seed: int = DEFAULT_SEED) -> None:
        self.spec = spec
        self.seed = provider_seed(seed, spec.id)
        self.token = f"{spec.id}-demo-cost-token"
        self.state = SimulatorState(seed=self.seed, token=self.token, models=spec.models)
        self.state.update_faults({"inference_latency_seconds": spec.latency_seconds})
        app = create_simulator_app(self.state)
        if spec.pricing == "compute_time":
            app = with_compute_time(app, self.seed)
        self.server = LoopbackServer(spec.id, app, lifespan="off")

    @property
    def url(self) -> str:
        return self.server.url

    def registration(self) -> dict:
        """The body of ``PUT /internal/v1/providers/{id}`` (SPEC §5.3)."""
        body: dict = {
            "url": self.url,
            "request_id_header": "Inference-Id",
            "pricing": self.spec.pricing,
            "credit_eligible": True,
            "default_estimate_nano_usd": self.spec.default_estimate_nano_usd,
        }
        if self.spec.pricing == "cost_endpoint":
            body |= {"cost_endpoint": f"{self.url}/billing/costs", "cost_token": self.token}
        else:
            body["hardware_prices_nano_usd_per_second"] = HARDWARE_PRICES
        return body

    async def set_faults(self, http: httpx.AsyncClient, faults: dict) -> None:
        """Replace the cost endpoint's faults over the simulator's admin route (latency is kept)."""
        body = {"reset": True, "inference_latency_seconds": self.spec.latency_seconds, **faults}
        response = await http.post(f"{self.url}/_sim/faults", json=body)
        response.raise_for_status()


@dataclass(frozen=True)
class FaultEvent:
    day: int
    provider: str
    kind: str  # lose_ids | delay_ids | rate_limit | bad_value | error_burst
    count: int = 1

    def describe(self) -> str:
        return {
            "lose_ids": f"never answers {self.count} request ID(s) (unpriced after the maximum age)",
            "delay_ids": "leaves out today's request IDs (asked again with back-off, priced the next day)",
            "rate_limit": f"answers 429 ×{self.count} with Retry-After (the provider is backed off)",
            "bad_value": f"answers a float cost for {self.count} request(s) (quarantined, never charged)",
            "error_burst": f"answers 503 ×{self.count} (the provider is backed off)",
        }[self.kind]


FAULT_EVENTS = (
    FaultEvent(2, "fireworks-ai", "lose_ids", count=2),
    FaultEvent(4, "fireworks-ai", "delay_ids"),
    FaultEvent(6, "together", "rate_limit", count=1),
    FaultEvent(9, "together", "bad_value", count=1),
    FaultEvent(13, "fireworks-ai", "error_burst", count=2),
)


class FaultPlan:
    """Sets each cost endpoint's faults for a day before its collection passes.

    IDs lost for good stay missing for the rest of the month; every other fault lasts one day.
    """

    def __init__(self, providers: dict[str, SimulatedProvider], events: tuple[FaultEvent, ...] = FAULT_EVENTS) -> None:
        self.providers = providers
        self.events = events
        self.lost: dict[str, list[str]] = {pid: [] for pid in COST_ENDPOINT_PROVIDERS}
        self._faulty: set[str] = set()

    async def apply(self, http: httpx.AsyncClient, *, day: int, billable_ids: dict[str, list[str]]) -> list[FaultEvent]:
        """Faults of ``day``; ``billable_ids`` are the day's priceable request ids per provider, sorted."""
        today = [event for event in self.events if event.day == day]
        faults: dict[str, dict] = {}
        for event in today:
            ids = billable_ids.get(event.provider, [])
            entry = faults.setdefault(event.provider, {})
            if event.kind == "lose_ids":
                self.lost[event.provider].extend(ids[: event.count])
            elif event.kind == "delay_ids":
                entry["missing_ids"] = list(ids)
            elif event.kind == "rate_limit":
                entry |= {"rate_limit_burst": event.count, "retry_after_seconds": 120}
            elif event.kind == "bad_value":
                entry["bad_values"] = {request_id: "float" for request_id in ids[: event.count]}
            elif event.kind == "error_burst":
                entry |= {"error_burst": event.count, "error_status": 503}
        for provider_id in COST_ENDPOINT_PROVIDERS:
            entry = faults.get(provider_id, {})
            if self.lost[provider_id]:
                entry["missing_ids"] = entry.get("missing_ids", []) + self.lost[provider_id]
            if entry or provider_id in self._faulty:
                await self.providers[provider_id].set_faults(http, entry)
            self._faulty.discard(provider_id)
            if entry:
                self._faulty.add(provider_id)
        return today
