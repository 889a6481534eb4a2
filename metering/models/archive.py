"""What ``metering archive`` leaves behind of a month it moved to Parquet: its manifest's figures and the sums
``metering verify`` checks the remaining rows against once that month's ledger entries are gone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, UTCDateTime


class ArchivedPeriod(Base):
    """A closed month written to Parquet and checked against the database, recorded in the transaction
    that makes ``metering verify`` read its sums instead of its rows.

    From this row on the month's live rows (if any are left) are ignored by verify; ``dropped_at``
    is set once they are all gone (partitions dropped, other rows deleted), which a rerun of the
    archive finishes if it was interrupted.
    """

    __tablename__ = "archived_periods"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The directory the month's files and manifest were written to.
    location: Mapped[str] = mapped_column(String(1024))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    # Per table: rows, and the sums of its amount columns (nano-USD), as the manifest has them.
    tables: Mapped[dict[str, Any]] = mapped_column(JSON)
    dropped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ArchivedLedgerSum(Base):
    """The sum of one ledger account's entries of an archived month (signed nano-USD, as the entries).

    A ledger account's cached balance equals its live entries plus these sums.
    """

    __tablename__ = "archived_ledger_sums"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    ledger_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"), primary_key=True)
    entries: Mapped[int] = mapped_column(BigInteger)
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)


class ArchivedAccountSum(Base):
    """An account's ledger sums of an archived month (``account_periods`` field → nano-USD), as verify
    computed them from the entries when the month was archived."""

    __tablename__ = "archived_account_sums"

    account_name: Mapped[str] = mapped_column(String(96), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    sums: Mapped[dict[str, int]] = mapped_column(JSON)
