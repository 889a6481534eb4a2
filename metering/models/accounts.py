"""Accounts (users and orgs share one namespace), org memberships, per-account provider switches."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, UTCDateTime

ACCOUNT_KINDS = ("user", "org")
ACCOUNT_STATUSES = ("active", "delinquent")
MEMBER_ROLES = ("admin", "write", "read")


class Account(Base):
    """A user or an organization. The name is the key every other table refers to."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind IN ('user', 'org')", name="kind"),
        CheckConstraint("status IN ('active', 'delinquent')", name="status"),
        CheckConstraint("seats >= 0", name="seats_non_negative"),
        CheckConstraint("spending_limit_nano_usd IS NULL OR spending_limit_nano_usd >= 0", name="limit_non_negative"),
    )

    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    plan: Mapped[str] = mapped_column(String(32))
    seats: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="active")
    # Cap on a period's pay-as-you-go amount (charged + in flight); NULL = no cap.
    spending_limit_nano_usd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Membership(Base):
    """A user's role in an org."""

    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint("role IN ('admin', 'write', 'read')", name="role"),)

    org_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"), primary_key=True)
    user_name: Mapped[str] = mapped_column(
        ForeignKey("accounts.name", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DisabledProvider(Base):
    """A provider an org admin switched off for requests billed to the account."""

    __tablename__ = "disabled_providers"

    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class AuditEvent(Base):
    """One change of a billing setting: who, when, what it was, what it became."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(96))
    action: Mapped[str] = mapped_column(String(64))
    before: Mapped[str] = mapped_column(String)  # JSON text
    after: Mapped[str] = mapped_column(String)  # JSON text
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
