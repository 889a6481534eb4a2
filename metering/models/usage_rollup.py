"""Hourly usage totals per billing account, kept by PostgreSQL triggers on ``usage_records``.

The usage time series of a large org reads about a million usage records a month; these
rows hold the same counts per UTC hour for each member, provider and model, so the series
reads tens of thousands of rows instead (a day sums its hours). The account itself, as a
member (a user paying for their own requests), has no member rows: its provider rows less
its other members' are its usage. Each statement that inserts, updates or deletes usage
records appends its signed difference in the same transaction (migrations 0005, 0006), so
the totals are exact at every commit and no writer waits on another; ``fold-usage-rollups``
folds those differences into one row per key, and adds them to the key's daily total (a
``day`` row, migration 0015), so a daily series of a month reads some thirty rows per key
instead of seven hundred: a day is its ``day`` row plus the hourly differences not folded yet.
SQLite has no statement triggers: there the
table stays empty and the series reads the usage records, as an embedded database holds
little.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime


class UsageRollup(Base):
    """A signed difference of one (account, span, dimension, key), or their folded sum.

    The truth of a key is the sum of its rows; a key with no usage sums to zero in every
    measure. ``folded`` rows were written by the fold job, the others by the triggers. A
    ``day`` row (always folded) is the sum of its day's folded ``hour`` rows of the same key.
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (
        Index("ix_usage_rollups_series", "billing_account", "span", "dimension", "starts_at", "key"),
        # The differences not folded yet: few, read by the fold and by every daily series.
        Index(
            "ix_usage_rollups_unfolded",
            "billing_account",
            "dimension",
            "starts_at",
            postgresql_where=text("NOT folded"),
            sqlite_where=text("NOT folded"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    billing_account: Mapped[str] = mapped_column(String(96))
    # 'hour' or 'day', and the UTC start of that hour or day: when the requests started.
    span: Mapped[str] = mapped_column(String(4))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # 'member', 'provider' or 'model': which usage_records column ``key`` holds.
    dimension: Mapped[str] = mapped_column(String(8))
    key: Mapped[str] = mapped_column(String(256))
    requests: Mapped[int] = mapped_column(BigInteger)
    priced_requests: Mapped[int] = mapped_column(BigInteger)
    cost_nano_usd: Mapped[int] = mapped_column(BigInteger)
    pending_requests: Mapped[int] = mapped_column(BigInteger)
    custom_key_requests: Mapped[int] = mapped_column(BigInteger)
    folded: Mapped[bool] = mapped_column(Boolean, default=False)
