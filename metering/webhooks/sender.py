"""One delivery attempt over HTTP: the event's exact body, signed, POSTed with one shared client.

The whole attempt (DNS, the address check, connect, send, status line) runs under
``webhook_timeout_seconds``; the body of the answer is not read. Redirects are not followed
(a redirect could lead to an address the check refused) and proxies from the environment are
not used (the check is of the address connected to).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import httpx

from metering.config import Settings
from metering.errors import MeteringError
from metering.periods import utcnow
from metering.providers.secrets import decrypt_token
from metering.webhooks.errors import UnsafeWebhookUrl
from metering.webhooks.repository import ClaimedDelivery
from metering.webhooks.signing import signed_headers
from metering.webhooks.urls import WebhookTarget, check_webhook_url, parse_webhook_url

USER_AGENT = "metering-webhooks/1"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """``outcome``: delivered (2xx), rejected (another status), timeout, unreachable, refused_url or no_secret."""

    delivery: ClaimedDelivery
    outcome: str
    at: datetime
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


class WebhookSender:
    """``async with WebhookSender(settings) as sender: await sender.send(delivery)``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._secrets: dict[bytes, str] = {}

    async def __aenter__(self) -> WebhookSender:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.webhook_timeout_seconds),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.settings.webhook_concurrency),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _secret(self, ciphertext: bytes) -> str:
        secret = self._secrets.get(ciphertext)
        if secret is None:
            secret = self._secrets[ciphertext] = decrypt_token(ciphertext)
        return secret

    async def _target(self, delivery: ClaimedDelivery) -> tuple[WebhookTarget, str]:
        """Where to send and with which secret: the platform's from the settings (the operator's own
        URL, sent as given), an org endpoint's checked again now."""
        if delivery.endpoint_url is None or delivery.endpoint_secret_encrypted is None:
            return WebhookTarget(parse_webhook_url(self.settings.webhook_url)), self.settings.webhook_secret
        target = await check_webhook_url(delivery.endpoint_url, allow_private=self.settings.webhook_allow_private_urls)
        return target, self._secret(delivery.endpoint_secret_encrypted)

    async def send(self, delivery: ClaimedDelivery) -> AttemptResult:
        """One attempt; every failure is a result, never an exception."""
        if self._client is None:
            raise RuntimeError("WebhookSender is used outside its async with block")
        at = utcnow()
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                target, secret = await self._target(delivery)
                body = delivery.body.encode()
                headers = {
                    **signed_headers(secret=secret, webhook_id=delivery.webhook_id, at=at, body=body),
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                }
                extensions = {}
                if target.host is not None and target.host_header is not None:
                    headers["host"] = target.host_header
                    extensions["sni_hostname"] = target.host
                request = self._client.build_request(
                    "POST", target.url, content=body, headers=headers, extensions=extensions
                )
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except UnsafeWebhookUrl as exc:
            return AttemptResult(delivery, "refused_url", at, error=exc.detail)
        except MeteringError as exc:  # the endpoint's secret cannot be decrypted with the configured key
            return AttemptResult(delivery, "no_secret", at, error=exc.detail)
        except (TimeoutError, httpx.TimeoutException):
            return AttemptResult(
                delivery, "timeout", at, error=f"no answer within {self.settings.webhook_timeout_seconds:g} s"
            )
        except httpx.HTTPError as exc:
            return AttemptResult(delivery, "unreachable", at, error=f"{type(exc).__name__}: {exc}"[:512])
        status = response.status_code
        if 200 <= status < 300:
            return AttemptResult(delivery, "delivered", at, status_code=status)
        return AttemptResult(delivery, "rejected", at, status_code=status, error=f"answered HTTP {status}")
