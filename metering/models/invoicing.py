"""Invoices made when a period closes, their per-provider lines, and the Stripe webhook events seen.

An invoice turns an account's pay-as-you-go amount of one period, plus the adjustments posted
to it, into whole cents: ``amount_cents * 10^7 + carried_out == total + carried_in``. The sub-cent
``carried_out_nano_usd`` is the next invoice's ``carried_in_nano_usd``, so the
latest invoice of an account is where its carried remainder lives.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime

# nothing_due: under one cent with the carry, kept for the trail and never sent to Stripe.
# pending → sent (every line is a Stripe invoice item) → open (Stripe invoice finalized)
# → paid | payment_failed (from webhooks; payment_failed may still become paid).
INVOICE_STATUSES = ("nothing_due", "pending", "sent", "open", "paid", "payment_failed")
# A line with zero cents is skipped: Stripe has nothing to charge for it.
LINE_STRIPE_STATUSES = ("pending", "sent", "skipped")
STRIPE_EVENT_OUTCOMES = ("applied", "stale", "ignored")


class Invoice(Base):
    """One account's bill for one closed period. Written once at close; only Stripe state moves after."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("account_name", "period"),
        CheckConstraint(
            "status IN ('nothing_due', 'pending', 'sent', 'open', 'paid', 'payment_failed')", name="status"
        ),
        CheckConstraint("payg_nano_usd > 0", name="payg_positive"),
        CheckConstraint("carried_in_nano_usd >= 0 AND carried_in_nano_usd < 10000000", name="carried_in_sub_cent"),
        CheckConstraint("carried_out_nano_usd >= 0 AND carried_out_nano_usd < 10000000", name="carried_out_sub_cent"),
        # Nothing lost or invented by rounding.
        CheckConstraint(
            "amount_cents * 10000000 + carried_out_nano_usd = payg_nano_usd + carried_in_nano_usd",
            name="cents_conserve_nanos",
        ),
        Index("ix_invoices_status", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    account_name: Mapped[str] = mapped_column(ForeignKey("accounts.name"))
    period: Mapped[str] = mapped_column(String(7))
    # The invoice's total before rounding: the receivable balance of the period (the sum of its entries)
    # when it closed, plus the period's adjustments (the line without a provider). Always > 0: a total
    # at or below zero makes no invoice (a credit is carried as an adjustment). The name predates
    # adjustments; the API shows the two parts as ``payg_nano_usd`` and ``adjustments_nano_usd``.
    payg_nano_usd: Mapped[int] = mapped_column(BigInteger)
    # Sub-cent remainder brought from the account's previous invoice.
    carried_in_nano_usd: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    # Sub-cent remainder carried to the account's next invoice.
    carried_out_nano_usd: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Why the last Stripe step failed; cleared when it succeeds.
    stripe_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # Stripe ``created`` (epoch seconds) of the latest webhook event applied to this invoice.
    stripe_event_created: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class InvoiceLine(Base):
    """An invoice's charges for one provider, or its adjustments, traceable to request ids.

    The request ids are those of the cost transactions (``ledger_transactions.usage_record_id``)
    with this line's ``provider_id`` that touched the account's receivable of the period; for the
    adjustments' line, those its adjustments name.
    Line cents are apportioned by largest remainder so that they sum to the invoice's cents.
    """

    __tablename__ = "invoice_lines"
    __table_args__ = (
        UniqueConstraint("invoice_id", "provider_id"),
        CheckConstraint("stripe_status IN ('pending', 'sent', 'skipped')", name="stripe_status"),
        CheckConstraint("requests_count >= 0", name="requests_non_negative"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), index=True)
    # NULL: the line of the period's adjustments (``metering.adjustments``), which name no provider;
    # every receivable posting names one. Its amount may be negative (a Stripe credit item).
    provider_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    requests_count: Mapped[int] = mapped_column(BigInteger)
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    stripe_status: Mapped[str] = mapped_column(String(16), default="pending")
    stripe_invoice_item_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class StripeEvent(Base):
    """A Stripe webhook event, stored once by id so a redelivery is recognized and not applied again."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        CheckConstraint("outcome IN ('applied', 'stale', 'ignored')", name="outcome"),
        Index("ix_stripe_events_account_created", "account_name", "event_created"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128))
    # Stripe's ``created``, epoch seconds: events older than the latest applied one are stale.
    event_created: Mapped[int] = mapped_column(BigInteger)
    account_name: Mapped[str | None] = mapped_column(String(96), nullable=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
