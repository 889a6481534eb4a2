"""The cost-endpoint protocol over one shared ``httpx.AsyncClient`` (created when a job starts).

``fetch`` POSTs ``{"requestIds": [...]}`` and returns the raw answer body, or
raises ``ProviderUnavailable`` with the kind of fault. The body is streamed and
cut off at ``max_response_bytes`` so a hostile or broken provider cannot make a
worker hold an unbounded answer in memory.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

import httpx
import orjson

from metering.collection.errors import ProviderUnavailable
from metering.config import Settings

# Retry-After is clamped to this range: a provider can neither make us hammer it nor park us for days.
RETRY_AFTER_MIN_SECONDS = 1.0
RETRY_AFTER_MAX_SECONDS = 3600.0


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), clamped; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    if value.isdigit():
        seconds = float(int(value))
    else:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, RETRY_AFTER_MIN_SECONDS), RETRY_AFTER_MAX_SECONDS)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class CostClient:
    """One per job run; ``async with CostClient(settings) as client`` opens and closes the pool."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.max_response_bytes = settings.cost_max_response_bytes
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.cost_connect_timeout_seconds,
                read=settings.cost_read_timeout_seconds,
                write=settings.cost_read_timeout_seconds,
                pool=settings.cost_connect_timeout_seconds,
            ),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            follow_redirects=False,
            transport=transport,
        )

    async def __aenter__(self) -> CostClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(self, *, provider: str, endpoint: str, token: str, request_ids: list[str]) -> bytes:
        """The raw JSON body of the provider's answer for ``request_ids``."""
        payload = orjson.dumps({"requestIds": request_ids})
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            async with self._http.stream("POST", endpoint, content=payload, headers=headers) as response:
                self._check_status(response, provider=provider)
                if not _is_json(response.headers.get("content-type", "")):
                    raise ProviderUnavailable(
                        f"cost answer has content type {response.headers.get('content-type')!r}, not JSON",
                        provider=provider,
                        kind="bad_response",
                    )
                return await self._read_bounded(response, provider=provider)
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"cost endpoint timed out ({type(exc).__name__})", provider=provider, kind="timeout"
            ) from None
        except httpx.ConnectError as exc:
            raise ProviderUnavailable(
                f"cannot connect to the cost endpoint: {exc}", provider=provider, kind="connect"
            ) from None
        except httpx.TransportError as exc:
            # The connection broke mid-answer (reset, protocol error): the answer is unusable.
            raise ProviderUnavailable(
                f"cost answer broke off ({type(exc).__name__}: {exc})", provider=provider, kind="bad_response"
            ) from None

    def _check_status(self, response: httpx.Response, *, provider: str) -> None:
        status = response.status_code
        if status == 200:
            return
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise ProviderUnavailable(
                "cost endpoint rate-limited us (429)", provider=provider, kind="429", retry_after_seconds=retry_after
            )
        if status >= 500:
            raise ProviderUnavailable(
                f"cost endpoint answered {status}", provider=provider, kind="5xx", retry_after_seconds=retry_after
            )
        if 400 <= status < 500:
            raise ProviderUnavailable(f"cost endpoint refused the request ({status})", provider=provider, kind="4xx")
        raise ProviderUnavailable(f"cost endpoint answered {status}, not 200", provider=provider, kind="bad_response")

    async def _read_bounded(self, response: httpx.Response, *, provider: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise ProviderUnavailable(
                f"cost answer of {declared} bytes exceeds the limit of {self.max_response_bytes}",
                provider=provider,
                kind="bad_response",
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise ProviderUnavailable(
                    f"cost answer exceeds the limit of {self.max_response_bytes} bytes",
                    provider=provider,
                    kind="bad_response",
                )
            chunks.append(chunk)
        return b"".join(chunks)
