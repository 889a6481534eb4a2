"""Money finance gives or corrects: credit grants, prepaid credits and adjustments (SPEC §3, §8).

Each is posted to the ledger by its owner package (``metering.credit_grants``,
``metering.adjustments``); these rows say what each is for and what is left of it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime


class CreditGrant(Base):
    """Credit that pays for billable requests after the period's plan credits and before pay-as-you-go,
    soonest expiry first: a finance grant (``source`` "grant") or prepaid credits bought through Stripe
    ("prepaid", keyed by its PaymentIntent).

    ``remaining_nano_usd`` is what is left: the amount, less what costs took, what expired and what a
    refund took back; ``metering verify`` checks it against the ledger account of ``period``.
    """

    __tablename__ = "credit_grants"
    __table_args__ = (
        CheckConstraint("source IN ('grant', 'prepaid')", name="source"),
        CheckConstraint("status IN ('pending', 'active', 'closed')", name="status"),
        CheckConstraint("amount_nano_usd > 0", name="amount_positive"),
        CheckConstraint("remaining_nano_usd >= 0 AND remaining_nano_usd <= amount_nano_usd", name="remaining_within"),
        UniqueConstraint("payment_intent_id"),
        Index("ix_credit_grants_account_name_status", "account_name", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))
    # pending: a top-up not paid yet (nothing to spend); active: spendable; closed: used up, expired or refunded.
    status: Mapped[str] = mapped_column(String(16))
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    remaining_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    # The last period it pays in; NULL: it never expires.
    expires_period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    # The period it was given in: the period of its ledger account.
    period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    reason: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(96))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # What Stripe has refunded of the payment so far, as last taken into account.
    refunded_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class CreditBalance(Base):
    """An account's spendable grants and prepaid credits: the sum of its active grants' remaining amounts,
    kept with them in the same transaction. The row authorize reads (locked) for that money."""

    __tablename__ = "credit_balances"
    __table_args__ = (CheckConstraint("available_nano_usd >= 0", name="available_non_negative"),)

    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"), primary_key=True)
    available_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)


class Adjustment(Base):
    """A correction finance made to an account's bill: ``amount_nano_usd`` > 0 is owed by the account,
    < 0 is in its favour. Posted to ``period`` (open when made) and invoiced with it; ``corrects_period``
    names the period it is about. ``kind`` "carry" is the part of a credit an invoice could not take
    (a total is never below zero), carried to the next period."""

    __tablename__ = "adjustments"
    __table_args__ = (
        CheckConstraint("amount_nano_usd <> 0", name="amount_non_zero"),
        CheckConstraint("kind IN ('adjustment', 'carry')", name="kind"),
        UniqueConstraint("account_name", "idempotency_key"),
        Index("ix_adjustments_account_name_period", "account_name", "period"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="adjustment")
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(String(7))
    corrects_period: Mapped[str] = mapped_column(String(7))
    reason: Mapped[str] = mapped_column(String(500))
    request_ids: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_by: Mapped[str] = mapped_column(String(96))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
