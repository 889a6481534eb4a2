"""The outbox of events (SPEC §11) and the alert thresholds accounts choose.

An event row is written in the transaction of the change that causes it, so it exists exactly
when the change does; ``dedupe_key`` names the cause, and its unique index makes a second
write for the same cause (a concurrent posting, a replayed webhook) a no-op.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime

# account: the platform endpoint and the account's own (org) endpoints; platform: the platform endpoint only.
EVENT_AUDIENCES = ("account", "platform")


class Event(Base):
    """One event, as delivered: ``body`` is the exact JSON every endpoint receives and the signature covers."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        CheckConstraint("audience IN ('account', 'platform')", name="audience"),
        Index("ix_events_account_name_id", "account_name", "id"),
        # The deliverer's queue of events not yet turned into deliveries.
        Index("ix_events_fanned_out_at", "fanned_out_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # The ``webhook-id`` header: the same on every attempt and every endpoint, so receivers can deduplicate.
    webhook_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(48))
    account_name: Mapped[str] = mapped_column(String(96))
    period: Mapped[str] = mapped_column(String(7))
    # The cause, e.g. ``credits.threshold:acme:2026-12:80``: one event per cause.
    dedupe_key: Mapped[str] = mapped_column(String(255))
    audience: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # When the deliverer made its deliveries (one per endpoint); NULL until then.
    fanned_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AlertSettings(Base):
    """The thresholds an account chose, in whole percent; an account without a row has the configured defaults."""

    __tablename__ = "alert_settings"

    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"), primary_key=True)
    # Percent of the period's included credits used.
    credits_percent: Mapped[list[int]] = mapped_column(JSON)
    # Percent of the spending limit committed (pay-as-you-go charged plus in flight).
    spending_limit_percent: Mapped[list[int]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
