"""The ``httpx`` event hook that spools a usage record for every routed provider response.

The router says what a request is by an httpx request extension, which is never sent on the wire
(headers would leak the user to the provider)::

    hook = MeteringHook(spool, request_id_headers={"together": "Inference-Id"}, sender=sender)
    client = httpx.AsyncClient(event_hooks={"request": [hook.on_request], "response": [hook.on_response]})
    await client.post(url, json=body, headers={"X-HF-Bill-To": "acme"},
                      extensions={"metering": {"provider_id": "together", "user": "alice",
                                               "model": "org/name", "hold_id": hold_id}})

Keys of the ``metering`` extension: ``provider_id``, ``user``, ``model`` (required); ``task``,
``custom_key``, ``hardware``, ``input_tokens``, ``output_tokens``, ``hold_id``, ``duration_ms``,
``started_at``, ``request_id_header`` (optional). Requests without it are not metered.

``on_request`` stamps the start time; without it ``started_at`` is the time the response arrived.
Unless the router gives ``duration_ms``, the duration is the time to the response headers (the
event hook runs before a streamed body is read).

What happens to a response without the provider's request-id header: a successful one (< 400) is
billable but can never be priced, so its record goes straight to the spool's dead-letter table
with the reason (never dropped silently) and ``stats.missing_request_id`` counts it; an error
response without one is a request the provider did not serve and is only counted
(``stats.unserved``). A record that fails to spool (e.g. disk full) is logged with its content
and counted, never raised into the router's response path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from metering_hook.records import DEFAULT_REQUEST_ID_HEADER, MissingRequestId, build_record
from metering_hook.sender import UsageSender
from metering_hook.spool import Spool

logger = logging.getLogger("metering.hook")

EXTENSION = "metering"
_STARTED = "metering.started"
_OPTIONAL_KEYS = ("task", "custom_key", "hardware", "input_tokens", "output_tokens", "hold_id")


@dataclass(slots=True)
class HookStats:
    recorded: int = 0
    missing_request_id: int = 0
    unserved: int = 0
    unmetered: int = 0
    failed: int = 0


class MeteringHook:
    """Builds and spools the usage record of each provider response seen by an ``httpx`` client."""

    def __init__(
        self,
        spool: Spool,
        *,
        request_id_headers: Mapping[str, str] | None = None,
        default_request_id_header: str = DEFAULT_REQUEST_ID_HEADER,
        sender: UsageSender | None = None,
    ) -> None:
        self.spool = spool
        self.request_id_headers = dict(request_id_headers or {})
        self.default_request_id_header = default_request_id_header
        self.sender = sender
        self.stats = HookStats()
        self._since_wake = 0

    async def on_request(self, request: httpx.Request) -> None:
        if EXTENSION in request.extensions:
            request.extensions[_STARTED] = (datetime.now(UTC), time.monotonic())

    async def on_response(self, response: httpx.Response) -> None:
        self.record_response(response)

    def record_response(self, response: httpx.Response) -> dict[str, Any] | None:
        """Spool the record of ``response`` (also usable as a sync ``httpx.Client`` hook); returns it."""
        request = response.request
        meta = request.extensions.get(EXTENSION)
        if meta is None:
            self.stats.unmetered += 1
            return None
        record: dict[str, Any] | None = None
        try:
            record = self._build(request, response, meta)
            self.spool.append(record)
        except MissingRequestId as missing:
            self._missing(response, missing)
            return None
        except Exception:  # metering must never break the router's response
            self.stats.failed += 1
            logger.exception("metering hook: could not spool the usage record %r", record)
            return None
        self.stats.recorded += 1
        self._maybe_wake()
        return record

    def _build(self, request: httpx.Request, response: httpx.Response, meta: Mapping[str, Any]) -> dict[str, Any]:
        provider_id = meta["provider_id"]
        started_at, started_monotonic = request.extensions.get(_STARTED) or (datetime.now(UTC), None)
        started_at = meta.get("started_at", started_at)
        duration_ms = meta.get("duration_ms")
        if duration_ms is None and started_monotonic is not None:
            duration_ms = int((time.monotonic() - started_monotonic) * 1000)
        header = meta.get("request_id_header") or self.request_id_headers.get(
            provider_id, self.default_request_id_header
        )
        return build_record(
            request_headers=request.headers,
            response_headers=response.headers,
            provider_id=provider_id,
            request_id_header=header,
            user=meta["user"],
            model=meta["model"],
            started_at=started_at,
            duration_ms=duration_ms,
            **{key: meta[key] for key in _OPTIONAL_KEYS if meta.get(key) is not None},
        )

    def _missing(self, response: httpx.Response, missing: MissingRequestId) -> None:
        if response.status_code >= 400:
            self.stats.unserved += 1
            return None
        self.stats.missing_request_id += 1
        logger.warning("metering hook: %s; record dead-lettered", missing.detail)
        try:
            self.spool.add_dead_letter(missing.record, missing.detail)
        except Exception:
            self.stats.failed += 1
            logger.exception("metering hook: could not dead-letter the usage record %r", missing.record)
        return None

    def _maybe_wake(self) -> None:
        if self.sender is None:
            return
        self._since_wake += 1
        if self._since_wake >= self.sender.batch_size:
            self._since_wake = 0
            self.sender.wake()


async def fetch_request_id_headers(base_url: str, client: httpx.AsyncClient | None = None) -> dict[str, str]:
    """Each registered provider's request-id header, from Metering's public ``GET /v1/providers``."""
    url = base_url.rstrip("/") + "/v1/providers"
    if client is None:
        async with httpx.AsyncClient(timeout=10.0) as own:
            response = await own.get(url)
    else:
        response = await client.get(url)
    response.raise_for_status()
    return {item["id"]: item["request_id_header"] for item in response.json()}
