"""Errors of adjustments."""

from __future__ import annotations

from metering.errors import Conflict, InvalidInput


class InvalidAdjustment(InvalidInput):
    """An amount, reason, period or request ids an adjustment cannot have."""


class AdjustmentKeyReused(Conflict):
    """An ``Idempotency-Key`` already used for this account by an adjustment with another body."""


class AccountNotInvoiced(Conflict):
    """The account's plan has no pay-as-you-go: it is never invoiced, so no adjustment could be billed or paid."""
