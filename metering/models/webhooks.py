"""Webhook endpoints org admins register, and one delivery per event and endpoint.

A delivery is claimed with a lease written on its row, so a deliverer killed mid-send loses
nothing: once the lease lapses another sends it again, with the event's same ``webhook-id``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime

DELIVERY_STATUSES = ("pending", "delivered", "failed")
# ``target`` of a delivery to the platform endpoint (METERING_WEBHOOK_URL); an org endpoint's is ``endpoint:<id>``.
PLATFORM_TARGET = "platform"


class WebhookEndpoint(Base):
    """An org's endpoint. ``secret_encrypted`` is Fernet ciphertext of its ``whsec_`` secret, shown once."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(256), nullable=True)
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(96))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Deleted endpoints are kept for the delivery log; they receive nothing more.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookDelivery(Base):
    """One event to one endpoint: retried with back-off until delivered or its retry window ends."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "target"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    # ``platform`` or ``endpoint:<id>``: deliveries are claimed fairly per target.
    target: Mapped[str] = mapped_column(String(32))
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Past this, a failed attempt marks the delivery failed instead of scheduling another.
    retry_until: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(96), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
