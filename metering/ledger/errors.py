"""Errors of the ledger."""

from metering.errors import InvalidInput, LedgerConflict

__all__ = ["LedgerConflict", "UnbalancedPosting", "UnknownLedgerAccount"]


class UnbalancedPosting(InvalidInput):
    """A posting whose entries do not sum to zero (or has none): refused, nothing written."""


class UnknownLedgerAccount(InvalidInput):
    """An entry names a code that is not a ledger account code."""
