"""Strict reading of a cost endpoint's answer: the batch's shape, then each entry's cost.

A body that is not the protocol (not JSON, truncated, not an object with a
``requests`` list) fails the whole batch. Inside a good body each entry is judged
alone: a cost that is not a JSON integer in ``[0, ceiling]`` quarantines that one
request. IDs we did not ask for are ignored; for an ID answered twice the FIRST
occurrence wins (later ones are ignored, whatever they say) — both are logged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from metering.collection.errors import ProviderUnavailable

# The quarantine kinds, also the ``reason`` label of the quarantine metric.
QUARANTINE_KINDS = ("bool", "float", "string", "null", "non_finite", "negative", "over_ceiling", "missing", "other")


class _NonFinite(float):
    """``NaN``/``Infinity`` as the stdlib parser sees them, kept apart from ordinary floats."""

    name: str

    def __new__(cls, name: str) -> _NonFinite:
        value = super().__new__(cls, name)
        value.name = name
        return value


@dataclass(slots=True)
class CostAnswer:
    """What one answer says about the IDs asked."""

    costs: dict[str, int] = field(default_factory=dict)
    # request id → (kind, human-readable reason)
    quarantined: dict[str, tuple[str, str]] = field(default_factory=dict)
    unknown_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    malformed_entries: int = 0

    def missing(self, asked: list[str]) -> list[str]:
        return [rid for rid in asked if rid not in self.costs and rid not in self.quarantined]


def parse_body(body: bytes, *, provider: str, exact: bool = False) -> Any:
    """JSON of an answer. orjson first (fast); the stdlib parser when orjson refuses the body or
    when ``exact`` is asked. The stdlib parser accepts the ``NaN``/``Infinity`` tokens, so one such
    entry is quarantined instead of failing the batch, and keeps integers beyond 64 bits as
    integers (orjson turns them into floats)."""
    if not exact:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body, parse_constant=_NonFinite)
    except (ValueError, RecursionError) as exc:
        raise ProviderUnavailable(
            f"cost answer is not valid JSON: {exc}", provider=provider, kind="bad_response"
        ) from None


class _NeedsExactParse(Exception):
    """A float cost came from orjson: it may be an integer too large for 64 bits; parse again."""


def judge_cost(value: Any, *, ceiling: int) -> tuple[str, str] | None:
    """None when ``value`` is an acceptable cost, else (kind, reason)."""
    if isinstance(value, bool):  # bool is an int subclass: test it first
        return "bool", f"costNanoUsd is a boolean ({str(value).lower()})"
    if isinstance(value, int):
        if value < 0:
            return "negative", f"costNanoUsd is negative ({value})"
        if value > ceiling:
            return "over_ceiling", f"costNanoUsd {value} exceeds the ceiling of {ceiling}"
        return None
    if isinstance(value, _NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
        return "non_finite", f"costNanoUsd is not a finite number ({getattr(value, 'name', value)})"
    if isinstance(value, float):
        return "float", f"costNanoUsd is not an integer ({value!r})"
    if isinstance(value, str):
        return "string", f"costNanoUsd is a string ({value[:40]!r})"
    if value is None:
        return "null", "costNanoUsd is null"
    return "other", f"costNanoUsd is a {type(value).__name__}"


def read_answer(body: bytes, *, asked: set[str], ceiling: int, provider: str) -> CostAnswer:
    """Judge a whole answer against the IDs asked; raises ``ProviderUnavailable`` for a bad shape."""
    try:
        return _judge(parse_body(body, provider=provider), asked=asked, ceiling=ceiling, provider=provider, exact=False)
    except _NeedsExactParse:
        document = parse_body(body, provider=provider, exact=True)
        return _judge(document, asked=asked, ceiling=ceiling, provider=provider, exact=True)


def _judge(document: Any, *, asked: set[str], ceiling: int, provider: str, exact: bool) -> CostAnswer:
    if not isinstance(document, dict) or not isinstance(document.get("requests"), list):
        raise ProviderUnavailable(
            'cost answer must be a JSON object with a "requests" list', provider=provider, kind="bad_response"
        )
    answer = CostAnswer()
    seen: set[str] = set()
    for entry in document["requests"]:
        request_id = entry.get("requestId") if isinstance(entry, dict) else None
        if not isinstance(request_id, str):
            answer.malformed_entries += 1
            continue
        if request_id not in asked:
            answer.unknown_ids.append(request_id)
            continue
        if request_id in seen:
            answer.duplicate_ids.append(request_id)
            continue
        seen.add(request_id)
        if "costNanoUsd" not in entry:
            answer.quarantined[request_id] = ("missing", "answer has no costNanoUsd")
            continue
        value = entry["costNanoUsd"]
        if type(value) is int and 0 <= value <= ceiling:  # the common case, first
            answer.costs[request_id] = value
            continue
        if isinstance(value, float) and not exact:
            raise _NeedsExactParse
        answer.quarantined[request_id] = judge_cost(value, ceiling=ceiling) or ("other", "costNanoUsd rejected")
    return answer
