"""Org webhook endpoints (registered by org admins, each with its own secret, shown once), the
delivery log and manual replay. Changes to endpoints are audited like the other billing settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.config import get_settings
from metering.errors import AccountNotFound
from metering.limits.repository import limit_repository
from metering.models import WebhookEndpoint
from metering.periods import utcnow
from metering.providers.secrets import encrypt_token
from metering.webhooks.errors import (
    TooManyWebhookEndpoints,
    WebhookDeliveryNotFound,
    WebhookEndpointDeleted,
    WebhookEndpointNotFound,
)
from metering.webhooks.repository import DeliveryRow, webhook_repository
from metering.webhooks.signing import new_secret
from metering.webhooks.urls import check_webhook_url

MAX_ENDPOINTS_PER_ACCOUNT = 10
ENDPOINT_CREATED_ACTION = "webhook_endpoint.created"
ENDPOINT_DELETED_ACTION = "webhook_endpoint.deleted"
DELETED_REASON = "the endpoint was deleted"


@dataclass(frozen=True, slots=True)
class EndpointView:
    id: int
    url: str
    description: str | None
    created_at: datetime


def _view(endpoint: WebhookEndpoint) -> EndpointView:
    return EndpointView(endpoint.id, endpoint.url, endpoint.description, endpoint.created_at)


def _json(value: dict[str, object]) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A URL ``check_endpoint_url`` found webhooks may be sent to."""

    url: str


class WebhookService:
    async def check_endpoint_url(self, url: str) -> CheckedUrl:
        """``url`` if webhooks may go there now (see ``metering.webhooks.urls``), else ``UnsafeWebhookUrl``.

        It resolves the host, so callers check before their transaction's first statement: on
        SQLite that statement takes the write lock, which a slow DNS answer would hold.
        """
        await check_webhook_url(url, allow_private=get_settings().webhook_allow_private_urls)
        return CheckedUrl(url)

    async def register_endpoint(
        self, session: AsyncSession, *, account_name: str, url: CheckedUrl, description: str | None, actor: str
    ) -> tuple[EndpointView, str]:
        """Register an endpoint for the account's events; returns it and its secret (never shown again)."""
        # Locked, so two registrations at once cannot both pass the count.
        account = await account_repository.lock(session, account_name)
        if account is None:
            raise AccountNotFound(f"no account named {account_name!r}", account=account_name)
        existing = await webhook_repository.endpoints_of(session, account_name)
        if len(existing) >= MAX_ENDPOINTS_PER_ACCOUNT:
            raise TooManyWebhookEndpoints(
                f"{account_name!r} has {len(existing)} webhook endpoints, the most it may have; delete one first",
                account=account_name,
            )
        secret = new_secret()
        now = utcnow()
        endpoint = WebhookEndpoint(
            account_name=account_name,
            url=url.url,
            description=description,
            secret_encrypted=encrypt_token(secret),
            created_by=actor,
            created_at=now,
        )
        webhook_repository.add_endpoint(session, endpoint)
        await session.flush()
        limit_repository.add_audit_event(
            session,
            account=account_name,
            actor=actor,
            action=ENDPOINT_CREATED_ACTION,
            before=_json({}),
            after=_json({"id": endpoint.id, "url": url.url}),
            now=now,
        )
        await session.flush()
        return _view(endpoint), secret

    async def list_endpoints(self, session: AsyncSession, *, account_name: str) -> list[EndpointView]:
        return [_view(endpoint) for endpoint in await webhook_repository.endpoints_of(session, account_name)]

    async def delete_endpoint(self, session: AsyncSession, *, account_name: str, endpoint_id: int, actor: str) -> None:
        """Stop sending to the endpoint; its pending deliveries are marked failed. Deleting twice is a no-op."""
        endpoint = await webhook_repository.endpoint(session, account=account_name, endpoint_id=endpoint_id)
        if endpoint is None:
            raise WebhookEndpointNotFound(f"{account_name!r} has no webhook endpoint {endpoint_id}")
        if endpoint.deleted_at is not None:
            return
        now = utcnow()
        endpoint.deleted_at = now
        await webhook_repository.give_up_pending(session, endpoint_id=endpoint_id, reason=DELETED_REASON)
        limit_repository.add_audit_event(
            session,
            account=account_name,
            actor=actor,
            action=ENDPOINT_DELETED_ACTION,
            before=_json({"id": endpoint_id, "url": endpoint.url}),
            after=_json({}),
            now=now,
        )
        await session.flush()

    async def list_deliveries(
        self,
        session: AsyncSession,
        *,
        account_name: str,
        limit: int = 50,
        before_id: int | None = None,
        status: str | None = None,
    ) -> list[DeliveryRow]:
        """Deliveries to the account's endpoints, newest first; page with ``before_id`` = the last id seen."""
        return await webhook_repository.deliveries_of(
            session, account=account_name, limit=max(1, min(limit, 500)), before_id=before_id, status=status
        )

    async def replay(self, session: AsyncSession, *, account_name: str, delivery_id: int) -> DeliveryRow:
        """Send a delivery again, now, with the same ``webhook-id`` and a fresh retry window."""
        row = await webhook_repository.delivery_of(session, account=account_name, delivery_id=delivery_id)
        if row is None:
            raise WebhookDeliveryNotFound(f"{account_name!r} has no webhook delivery {delivery_id}")
        if row.endpoint_id is None or await webhook_repository.endpoint_deleted(session, endpoint_id=row.endpoint_id):
            raise WebhookEndpointDeleted(f"webhook delivery {delivery_id} went to an endpoint that was deleted")
        now = utcnow()
        retry_until = now + timedelta(seconds=get_settings().webhook_retry_window_seconds)
        await webhook_repository.replay(session, delivery_id=delivery_id, now=now, retry_until=retry_until)
        replayed = await webhook_repository.delivery_of(session, account=account_name, delivery_id=delivery_id)
        if replayed is None:  # the row was just read in this transaction
            raise WebhookDeliveryNotFound(f"{account_name!r} has no webhook delivery {delivery_id}")
        return replayed


webhook_service = WebhookService()
