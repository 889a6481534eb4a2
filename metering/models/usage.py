"""Usage records: one row per routed request, keyed by (provider, request_id).

On PostgreSQL ``usage_records`` is partitioned by month (``LIST (period)``, migration 0014):
one partition per period plus a DEFAULT one, created ahead by the ``create-partitions`` job
(``metering.partitions``) and dropped whole by ``metering archive``. A partitioned table's
unique keys must hold its partition key, so there the primary key is ``(id, period)`` and the
uniqueness of ``(provider_id, request_id)`` across every month is kept by ``usage_request_keys``.
SQLite keeps one table, with the unique constraint below.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime

USAGE_STATUSES = ("pending", "priced", "custom_key", "unpriced", "quarantined")


class UsageRecord(Base):
    """A request the router sent to a provider.

    Lifecycle: ``pending`` → ``priced`` (cost known, posted to the ledger once),
    ``quarantined`` (the provider's answer was invalid; never charged), or
    ``unpriced`` (no answer past the maximum age). ``custom_key`` requests are
    recorded for usage views and never priced.

    PostgreSQL: partitioned by ``period``, primary key ``(id, period)``; ``id`` is still unique
    (one sequence), and ``(provider_id, request_id)`` is unique through ``usage_request_keys``
    rather than the constraint below, which only SQLite has.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("provider_id", "request_id"),
        CheckConstraint("status IN ('pending', 'priced', 'custom_key', 'unpriced', 'quarantined')", name="status"),
        CheckConstraint("cost_nano_usd IS NULL OR cost_nano_usd >= 0", name="cost_non_negative"),
        CheckConstraint("(status = 'priced') = (cost_nano_usd IS NOT NULL)", name="priced_has_cost"),
        CheckConstraint("estimate_nano_usd >= 0", name="estimate_non_negative"),
        # The claim query of cost collection: pending requests of a provider, due first.
        Index("ix_usage_records_collect", "provider_id", "status", "next_attempt_at"),
        # The usage time series reads only the index on PostgreSQL (see the 0003 migration).
        Index(
            "ix_usage_records_billing_time",
            "billing_account",
            "started_at",
            postgresql_include=["user_name", "provider_id", "model", "status", "custom_key", "cost_nano_usd"],
        ),
        Index("ix_usage_records_billing_period_status", "billing_account", "period", "status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    request_id: Mapped[str] = mapped_column(String(256))
    # Not indexed on its own: members are read through ix_usage_records_billing_time (migration 0007).
    user_name: Mapped[str] = mapped_column(ForeignKey("accounts.name"))
    # The raw X-HF-Bill-To value as the router saw it.
    bill_to: Mapped[str | None] = mapped_column(String(96), nullable=True)
    # Who pays: the bill_to org when it was valid at record time, else the user.
    billing_account: Mapped[str] = mapped_column(ForeignKey("accounts.name"))
    # Set when bill_to named an account that could not be billed; the record is kept, billed to the user.
    bill_to_flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    bill_to_flag_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str] = mapped_column(String(256))
    task: Mapped[str | None] = mapped_column(String(64), nullable=True)
    custom_key: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # YYYY-MM of started_at, stored so period queries use an index; on PostgreSQL the partition key.
    period: Mapped[str] = mapped_column(String(7))
    duration_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    hardware: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    hold_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Set when hold_id named a hold of another user, billing account or provider: that hold was left alone.
    hold_flag_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Hash of the record's content as sent: equal hash = duplicate, different = conflict.
    content_hash: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # The estimate used for this request (from its hold, else the estimator). While status is
    # 'pending' it counts against credits and limits; kept after settling for the drift report.
    estimate_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    # The provider's price, set exactly once when status becomes 'priced'.
    cost_nano_usd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quarantine_reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    priced_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Cost collection: attempts, back-off and the lease of the worker asking for it.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UsageRequestKey(Base):
    """Each (provider, request_id) stored, with the record that holds it: the global unique key of
    usage records on PostgreSQL, where ``usage_records`` is partitioned by month.

    Ingest writes a record's key in the same statement as the record (``metering.usage.repository_pg``):
    the key is inserted first, ON CONFLICT DO NOTHING, and only the records whose key was inserted
    now are stored, so a replay, or fifty concurrent ones, stores each request once, as the
    unique constraint did before partitioning. A statement-level trigger on ``usage_records``
    (migration 0014) adds the key of a record written any other way and fails with a unique
    violation when its key names another record, so no writer can store a request twice.
    Unpartitioned on purpose (a key must be unique across months); its rows are narrow, and
    ``metering archive`` deletes those of archived months, which no record can arrive for any more.
    SQLite keeps the unique constraint of ``usage_records``; there this table stays empty.
    """

    __tablename__ = "usage_request_keys"

    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    # The period of the record holding the key: where to find it, and when the key may go.
    period: Mapped[str] = mapped_column(String(7))
    usage_record_id: Mapped[int] = mapped_column(BigInteger)
