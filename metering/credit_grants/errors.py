"""Errors of credit grants and prepaid credits."""

from __future__ import annotations

from metering.errors import InvalidInput


class InvalidCreditGrant(InvalidInput):
    """An amount, reason or expiry period a grant or top-up cannot have."""
