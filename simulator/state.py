"""The simulated provider's memory: the costs of requests it served, and the faults to inject.

Costs are deterministic per request ID for a seed (50,000–500,000 nano-USD);
fault choices that are fractions draw from a ``random.Random(seed)``, so a run
with the same seed and the same calls answers the same way.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from typing import Literal

import orjson
from pydantic import BaseModel, Field

BadValue = Literal["bool", "float", "float_integral", "string", "null", "nan", "infinity", "negative", "over_ceiling"]

DEFAULT_MODELS = ("sim/model",)
MIN_COST_NANO_USD = 50_000
MAX_COST_NANO_USD = 500_000


class Faults(BaseModel):
    """What the provider does wrong. Counts (``*_burst``, ``truncated_json``, ``cut_streams``, …) apply to the
    next N calls.

    The cost endpoint's faults come first; ``inference_latency_seconds`` delays every chat answer before
    its first byte; a streamed answer also waits ``stream_chunk_delay_seconds`` before each later chunk,
    and a cut stream closes the connection after ``cut_after_chunks`` chunks, without its last chunk or
    ``data: [DONE]`` (a transport error for the client; the request was served and is billed).
    """

    missing_fraction: float = Field(0.0, ge=0, le=1)
    missing_ids: list[str] = Field(default_factory=list)
    bad_values: dict[str, BadValue] = Field(default_factory=dict, description="request id → bad value kind")
    bad_value_fractions: dict[BadValue, float] = Field(default_factory=dict)
    error_burst: int = Field(0, ge=0)
    error_status: int = Field(503, ge=500, le=599)
    rate_limit_burst: int = Field(0, ge=0)
    retry_after_seconds: int | None = Field(None, ge=0)
    retry_after_format: Literal["seconds", "http-date"] = "seconds"
    slow_seconds: float = Field(0.0, ge=0)
    truncated_json: int = Field(0, ge=0)
    html_200: int = Field(0, ge=0)
    wrong_content_type: int = Field(0, ge=0)
    duplicate_fraction: float = Field(0.0, ge=0, le=1)
    unknown_ids: int = Field(0, ge=0)
    revise_on_second_ask: bool = False
    revise_delta_nano_usd: int = 7_000
    ceiling_nano_usd: int = 100_000_000_000
    inference_latency_seconds: float = Field(0.0, ge=0)
    # Streamed answers: the wait before each chunk after the first, and the next N streams cut short.
    stream_chunk_delay_seconds: float = Field(0.0, ge=0)
    cut_streams: int = Field(0, ge=0)
    cut_after_chunks: int = Field(2, ge=0)


def deterministic_cost(seed: int, request_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{request_id}".encode(), digest_size=8).digest()
    return MIN_COST_NANO_USD + int.from_bytes(digest, "big") % (MAX_COST_NANO_USD - MIN_COST_NANO_USD + 1)


_BAD_LITERALS: dict[str, bytes] = {
    "bool": b"true",
    "float": b"123.5",
    "float_integral": b"100.0",
    "string": b'"100"',
    "null": b"null",
    "nan": b"NaN",
    "infinity": b"Infinity",
    "negative": b"-5",
}


class SimulatorState:
    """Everything one simulated provider remembers; not thread-safe, used from its event loop only."""

    def __init__(
        self, *, seed: int = 0, token: str = "provider-token", models: tuple[str, ...] = DEFAULT_MODELS
    ) -> None:
        self.seed = seed
        self.token = token
        # What ``GET /v1/models`` lists; the chat route answers any model all the same.
        self.models = models
        self.rng = random.Random(seed)
        self.faults = Faults()
        self.costs: dict[str, int] = {}
        self.asks: dict[str, int] = {}
        self.cost_calls = 0
        self.inference_calls = 0

    def update_faults(self, changes: dict, *, reset: bool = False) -> Faults:
        base = {} if reset else self.faults.model_dump()
        self.faults = Faults.model_validate({**base, **changes})
        return self.faults

    def serve_inference(self) -> tuple[str, int]:
        """A new request ID (seeded) and the cost remembered for it."""
        self.inference_calls += 1
        request_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        cost = deterministic_cost(self.seed, request_id)
        self.costs[request_id] = cost
        return request_id, cost

    def preload(self, *, costs: dict[str, int] | None = None, request_ids: list[str] | None = None) -> int:
        """Remember IDs as served: with given costs, or with their deterministic cost."""
        if costs:
            self.costs.update(costs)
        for request_id in request_ids or ():
            self.costs[request_id] = deterministic_cost(self.seed, request_id)
        return len(self.costs)

    def take(self, name: str) -> bool:
        """Consume one of the next-N-calls faults named ``name``."""
        remaining = getattr(self.faults, name)
        if remaining > 0:
            setattr(self.faults, name, remaining - 1)
            return True
        return False

    def answer_costs(self, request_ids: list[str]) -> bytes:
        """The body of a cost answer, with the configured per-entry faults (serialized by hand so
        that the non-JSON tokens ``NaN``/``Infinity`` can be sent)."""
        faults = self.faults
        entries: list[bytes] = []
        duplicates: list[bytes] = []
        for request_id in request_ids:
            cost = self.costs.get(request_id)
            if cost is None or not isinstance(request_id, str):
                continue
            if request_id in faults.missing_ids or (
                faults.missing_fraction and self.rng.random() < faults.missing_fraction
            ):
                continue
            asked = self.asks.get(request_id, 0) + 1
            self.asks[request_id] = asked
            if faults.revise_on_second_ask and asked > 1:
                cost += faults.revise_delta_nano_usd
            entries.append(self._entry(request_id, self._value(request_id, cost)))
            if faults.duplicate_fraction and self.rng.random() < faults.duplicate_fraction:
                duplicates.append(self._entry(request_id, str(cost + 1).encode()))
        for _ in range(faults.unknown_ids):
            unknown = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            entries.append(self._entry(unknown, str(deterministic_cost(self.seed, unknown)).encode()))
        return b'{"requests":[' + b",".join(entries + duplicates) + b"]}"

    def _value(self, request_id: str, cost: int) -> bytes:
        kind = self.faults.bad_values.get(request_id)
        if kind is None:
            for candidate, fraction in self.faults.bad_value_fractions.items():
                if self.rng.random() < fraction:
                    kind = candidate
                    break
        if kind is None:
            return str(cost).encode()
        if kind == "over_ceiling":
            return str(self.faults.ceiling_nano_usd + 1).encode()
        return _BAD_LITERALS[kind]

    @staticmethod
    def _entry(request_id: str, value: bytes) -> bytes:
        return b'{"requestId":' + orjson.dumps(request_id) + b',"costNanoUsd":' + value + b"}"
