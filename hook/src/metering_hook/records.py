"""Build the usage record of SPEC §5.2 from what the router saw: its request and the provider's response."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from metering_hook.errors import HookError

DEFAULT_REQUEST_ID_HEADER = "Inference-Id"
BILL_TO_HEADER = "X-HF-Bill-To"
MAX_REQUEST_ID_LENGTH = 256

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class MissingRequestId(HookError):
    """The provider's response carries no usable request-id header, so the request cannot be priced.

    ``record`` holds everything else that was known, so the caller can dead-letter it instead of
    losing it (``MeteringHook`` does).
    """

    def __init__(self, detail: str, *, record: dict[str, Any]) -> None:
        super().__init__(detail)
        self.record = record


def header_value(headers: Headers, name: str) -> str | None:
    """The value of ``name`` in ``headers``, compared case-insensitively; ``None`` when absent.

    Accepts ``httpx.Headers`` (already case-insensitive), a plain dict or a list of pairs.
    """
    if isinstance(headers, Mapping):
        value = headers.get(name)
        if value is not None:
            return value
        pairs: Iterable[tuple[str, str]] = headers.items()
    else:
        pairs = headers
    wanted = name.lower()
    for key, value in pairs:
        if key.lower() == wanted:
            return value
    return None


def _rfc3339(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        # A naive time is ambiguous; guessing the zone would misplace requests near a period boundary.
        raise ValueError("started_at must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _non_negative(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def build_record(
    *,
    request_headers: Headers,
    response_headers: Headers,
    provider_id: str,
    request_id_header: str = DEFAULT_REQUEST_ID_HEADER,
    user: str,
    model: str,
    started_at: datetime | str,
    duration_ms: int | None = None,
    task: str | None = None,
    custom_key: bool = False,
    hardware: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    hold_id: str | None = None,
) -> dict[str, Any]:
    """The §5.2 record for one routed request, ready to spool.

    ``bill_to`` comes from the router's outgoing ``X-HF-Bill-To`` header (empty means none); the
    request id from the provider's configured response header. Optional fields are left out when
    unknown so the service applies its defaults. Raises ``MissingRequestId`` (carrying the partial
    record) when the response has no request id, or one the service could never accept (empty,
    longer than 256 characters, or not printable): such a request can never be priced, and the
    caller decides where it goes. Raises ``ValueError`` for a programming error in the arguments.
    """
    bill_to = (header_value(request_headers, BILL_TO_HEADER) or "").strip() or None
    record: dict[str, Any] = {
        "request_id": None,
        "provider": provider_id,
        "user": user,
        "bill_to": bill_to,
        "model": model,
        "custom_key": bool(custom_key),
        "started_at": _rfc3339(started_at),
    }
    optional = {
        "task": task,
        "duration_ms": _non_negative("duration_ms", duration_ms),
        "hardware": hardware,
        "input_tokens": _non_negative("input_tokens", input_tokens),
        "output_tokens": _non_negative("output_tokens", output_tokens),
        "hold_id": hold_id,
    }
    record.update((key, value) for key, value in optional.items() if value is not None)

    request_id = header_value(response_headers, request_id_header)
    request_id = request_id.strip() if request_id is not None else None
    if not request_id:
        raise MissingRequestId(f"response from {provider_id!r} has no {request_id_header} header", record=record)
    if len(request_id) > MAX_REQUEST_ID_LENGTH or not request_id.isprintable():
        record["request_id"] = request_id[:MAX_REQUEST_ID_LENGTH]
        raise MissingRequestId(
            f"response from {provider_id!r} has an invalid {request_id_header} header "
            f"({len(request_id)} characters, printable={request_id.isprintable()})",
            record=record,
        )
    record["request_id"] = request_id
    return record
