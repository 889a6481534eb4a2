"""Double-entry ledger: accounts, transactions and signed entries, append-only.

Sign convention: debit is positive, credit is negative; the entries of a
transaction sum to zero. Ledger accounts are scoped by owner and period:

- ``credits:<account>:<period>``     credit balance is the credits still available (negative = unused)
- ``receivable:<account>:<period>``  debit balance is pay-as-you-go owed by the account
- ``payable:<provider>:<period>``    credit balance is what the platform owes the provider
- ``credits_expense:<period>``       debit balance is credits granted (platform side)
- ``write_off:<period>``             debit balance is cost no one will be invoiced for
- ``granted_credits:<account>:<period>`` / ``prepaid_credits:<account>:<period>``
                                     credit balance is what is left of the grants / prepaid credits
                                     given in that period (they pay in later periods too)
- ``grants_expense:<period>``        debit balance is credit granted by finance in the period
- ``prepaid_cash:<period>``          debit balance is prepaid credit paid for, less refunds
- ``expired_credits:<period>``       credit balance is grants and prepaid credits that expired unused
- ``adjustment:<account>:<period>``  debit balance is what finance adjusted the period's invoice by
                                     (negative: in the account's favour)
- ``adjustments:<period>``           the platform's side of those adjustments
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, BigIntPK, UTCDateTime


class LedgerAccount(Base):
    """A balance. ``balance_nano_usd`` is a cache of the sum of its entries, checked by ``metering verify``."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (Index("ix_ledger_accounts_owner_period", "owner", "period"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    code: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str | None] = mapped_column(String(96), nullable=True)
    period: Mapped[str] = mapped_column(String(7))
    balance_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerTransaction(Base):
    """A balanced posting. ``idempotency_key`` makes every posting happen at most once.

    ``usage_record_id`` is unique: a request's cost is posted by exactly one
    transaction (its corrections are other kinds with no usage_record_id). On PostgreSQL it
    has no foreign key: ``usage_records`` is partitioned there, keyed ``(id, period)``, and a
    late cost posted to an open period outlives its record once the record's month is archived.
    """

    __tablename__ = "ledger_transactions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    account_name: Mapped[str | None] = mapped_column(String(96), nullable=True, index=True)
    provider_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    period: Mapped[str] = mapped_column(String(7), index=True)
    # For a late adjustment: the closed period the cost belonged to.
    original_period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    usage_record_id: Mapped[int | None] = mapped_column(ForeignKey("usage_records.id"), nullable=True, unique=True)
    memo: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # For a cost: the plan its account was on when it was posted (it decides pay-as-you-go or write-off).
    plan: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LedgerEntry(Base):
    """One signed line of a transaction (debit > 0, credit < 0).

    ``period`` is its transaction's period, copied when the entry is written (the ledger's
    repositories do it in the insert itself). On PostgreSQL it is the partition key: the table
    is partitioned by month (migration 0014) with primary key ``(id, period)``, so a closed
    month's entries are read, archived and dropped as one partition.
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    ledger_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"), index=True)
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(String(7))
