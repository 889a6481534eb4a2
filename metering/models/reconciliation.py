"""Provider reconciliations (SPEC §8): a provider's monthly statement compared with what the ledger posted.

``reconciliations`` is append-only and is its own audit trail: who uploaded (``created_by``),
when (``created_at``), why (``reason``), what it replaced (``supersedes_id``, the provider's
previous reconciliation of the period) and what it found. ``reconciliation_items`` holds
every discrepancy; ``reconciliation_lines`` is the statement's staging area, emptied when the
comparison is stored (see ``metering.reconciliation.service``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime

RECONCILIATION_STATUSES = ("loading", "complete")
DISCREPANCY_KINDS = ("amount_mismatch", "only_provider", "only_ledger")


class Reconciliation(Base):
    """One statement of one provider for one period, and what comparing it found.

    ``loading`` while the statement streams into ``reconciliation_lines``; ``complete`` once
    the comparison, counts and items are stored, in one transaction. Only complete rows are
    read (listing, export); a loading row left behind by a failed upload is swept with its
    staged lines. Counts are of request ids: ``lines = matched + amount_mismatch_count +
    only_provider_count``, and the ledger side holds ``matched + amount_mismatch_count +
    only_ledger_count``. Totals are exact sums of nano-USD (the provider's as stated, the
    ledger's as posted to the provider's payable).
    """

    __tablename__ = "reconciliations"
    __table_args__ = (
        CheckConstraint("status IN ('loading', 'complete')", name="status"),
        CheckConstraint(
            "lines >= 0 AND matched >= 0 AND amount_mismatch_count >= 0 AND only_provider_count >= 0 "
            "AND only_ledger_count >= 0 AND provider_total_nano_usd >= 0 AND ledger_total_nano_usd >= 0",
            name="non_negative",
        ),
        # Listing a period, and the latest reconciliation of each provider in it (the export).
        Index("ix_reconciliations_period_provider_id", "period", "provider_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    period: Mapped[str] = mapped_column(String(7))
    status: Mapped[str] = mapped_column(String(16), default="loading")
    # Request lines of the statement (the header not counted).
    lines: Mapped[int] = mapped_column(BigInteger, default=0)
    matched: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_mismatch_count: Mapped[int] = mapped_column(BigInteger, default=0)
    only_provider_count: Mapped[int] = mapped_column(BigInteger, default=0)
    only_ledger_count: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sum of the statement's costs.
    provider_total_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sum of the costs the ledger posted to the provider's payable for the period's requests.
    ledger_total_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    # The finance user who uploaded the statement, and the note they gave (why), if any.
    created_by: Mapped[str] = mapped_column(String(96))
    reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # The provider's previous complete reconciliation of the period, which this one replaces as the latest.
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("reconciliations.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReconciliationItem(Base):
    """A request on which the statement and the ledger disagree.

    ``amount_mismatch``: on both sides, amounts differ (both set); ``only_provider``: on the
    statement only (``ledger_nano_usd`` NULL); ``only_ledger``: posted but not on the
    statement (``provider_nano_usd`` NULL).
    """

    __tablename__ = "reconciliation_items"
    __table_args__ = (
        CheckConstraint("kind IN ('amount_mismatch', 'only_provider', 'only_ledger')", name="kind"),
        CheckConstraint(
            "(kind = 'amount_mismatch' AND ledger_nano_usd IS NOT NULL AND provider_nano_usd IS NOT NULL)"
            " OR (kind = 'only_provider' AND ledger_nano_usd IS NULL AND provider_nano_usd IS NOT NULL)"
            " OR (kind = 'only_ledger' AND ledger_nano_usd IS NOT NULL AND provider_nano_usd IS NULL)",
            name="amounts_of_kind",
        ),
        # A request is one kind of discrepancy; each kind is listed in request id order.
        UniqueConstraint("reconciliation_id", "kind", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    reconciliation_id: Mapped[int] = mapped_column(ForeignKey("reconciliations.id", ondelete="CASCADE"))
    request_id: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16))
    ledger_nano_usd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    provider_nano_usd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ReconciliationLine(Base):
    """A statement line while its reconciliation is loading: staging, deleted once the comparison is stored.

    The primary key refuses a request id stated twice and is the index the comparison probes.
    UNLOGGED on PostgreSQL (see the 0012 migration): a crash empties it, and the loading
    reconciliation it belonged to is swept anyway.
    """

    __tablename__ = "reconciliation_lines"
    # SQLite: rows stored in the primary key's tree itself, not beside it (a fifth faster to stage and delete).
    __table_args__ = ({"sqlite_with_rowid": False},)

    # No foreign key: PostgreSQL checks one per inserted row with a trigger, which made staging a
    # million lines five times slower (6 s instead of 1.1 s). The service deletes a reconciliation's
    # lines itself, and the sweep takes those of reconciliations no longer loading.
    reconciliation_id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=False)
    request_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    cost_nano_usd: Mapped[int] = mapped_column(BigInteger)
    # The line of the statement (the header is line 1), to name both lines of a duplicate.
    line: Mapped[int] = mapped_column(BigInteger)
