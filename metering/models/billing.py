"""Per-account period state and holds: what authorize reads and locks on the hot path."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, UTCDateTime


class AccountPeriod(Base):
    """An account's running totals for one period; the row ``authorize`` locks.

    Every amount is a cache of a sum (ledger balances, pending estimates, open
    holds) kept in the same transaction as the change, and checked against the
    sum by ``metering verify``.
    """

    __tablename__ = "account_periods"
    __table_args__ = (
        CheckConstraint("held_nano_usd >= 0", name="held_non_negative"),
        CheckConstraint("pending_estimate_nano_usd >= 0", name="pending_non_negative"),
        CheckConstraint(
            "held_payg_only_nano_usd >= 0 AND held_payg_only_nano_usd <= held_nano_usd",
            name="held_payg_only_within_held",
        ),
        CheckConstraint(
            "pending_payg_only_nano_usd >= 0 AND pending_payg_only_nano_usd <= pending_estimate_nano_usd",
            name="pending_payg_only_within_pending",
        ),
    )

    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    # Seats the grant was computed for, so a mid-period seat increase tops up the difference.
    granted_seats: Mapped[int] = mapped_column(Integer, default=0)
    credits_granted_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_used_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    payg_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    written_off_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    pending_estimate_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    held_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    # The parts of pending_estimate_nano_usd and held_nano_usd whose provider is not credit-eligible:
    # credits can never pay them, so authorize counts them toward pay-as-you-go in full.
    pending_payg_only_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    held_payg_only_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # True while the credits were granted before the period began (the grant-credits job grants
    # next month's in the last hours of a month) and not yet checked against the plan the account
    # has once it began: its first decision, any posting, or the job's first run in the period
    # sets them to that plan's credits and clears it (``metering.credits.service``).
    credits_granted_ahead: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Hold(Base):
    """An estimate reserved by ``authorize`` until the usage record arrives or the TTL passes."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("status IN ('held', 'attached', 'released', 'expired')", name="status"),
        CheckConstraint("amount_nano_usd >= 0", name="amount_non_negative"),
        Index("ix_holds_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"))
    user_name: Mapped[str] = mapped_column(String(96))
    provider_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    period: Mapped[str] = mapped_column(String(7))
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="held")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    usage_record_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Period(Base):
    """A billing period's lifecycle: open until closed by the close-period job."""

    __tablename__ = "periods"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
