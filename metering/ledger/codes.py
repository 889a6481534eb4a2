"""Codes of ledger accounts: ``<kind>:<owner>:<period>`` (or ``<kind>:<period>`` for platform accounts).

The sign convention of each kind is in ``metering/models/ledger.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

CREDITS = "credits"
RECEIVABLE = "receivable"
PAYABLE = "payable"
CREDITS_EXPENSE = "credits_expense"
WRITE_OFF = "write_off"

OWNED_KINDS = (CREDITS, RECEIVABLE, PAYABLE)
PLATFORM_KINDS = (CREDITS_EXPENSE, WRITE_OFF)

# Transaction kinds.
GRANT = "credit_grant"
REQUEST_COST = "request_cost"
LATE_REQUEST_COST = "late_request_cost"
COST_KINDS = (REQUEST_COST, LATE_REQUEST_COST)


@dataclass(frozen=True, slots=True)
class LedgerCode:
    kind: str
    owner: str | None
    period: str


def credits(account: str, period: str) -> str:
    return f"{CREDITS}:{account}:{period}"


def receivable(account: str, period: str) -> str:
    return f"{RECEIVABLE}:{account}:{period}"


def payable(provider: str, period: str) -> str:
    return f"{PAYABLE}:{provider}:{period}"


def credits_expense(period: str) -> str:
    return f"{CREDITS_EXPENSE}:{period}"


def write_off(period: str) -> str:
    return f"{WRITE_OFF}:{period}"


@lru_cache(maxsize=65_536)  # a batch names the same few codes thousands of times
def parse(code: str) -> LedgerCode:
    """Split a code; owners may contain ':' (they never do today, but the period is always last)."""
    kind, _, rest = code.partition(":")
    if kind in PLATFORM_KINDS and rest and ":" not in rest:
        return LedgerCode(kind, None, rest)
    owner, _, period = rest.rpartition(":")
    if kind not in OWNED_KINDS or not owner or not period:
        raise ValueError(f"not a ledger account code: {code!r}")
    return LedgerCode(kind, owner, period)
