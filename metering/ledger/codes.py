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
# Credit grants by finance and prepaid credits bought through Stripe (``metering.credit_grants``): the
# owned account's period is the one the credit was given in; it pays in any later period until it expires.
GRANTED_CREDITS = "granted_credits"
PREPAID_CREDITS = "prepaid_credits"
GRANTS_EXPENSE = "grants_expense"
PREPAID_CASH = "prepaid_cash"
EXPIRED_CREDITS = "expired_credits"
# Adjustments by finance (``metering.adjustments``): what the account owes (> 0) or is owed (< 0) on the
# invoice of the period they are posted to, against the platform's ``adjustments`` of that period.
ADJUSTMENT = "adjustment"
ADJUSTMENTS = "adjustments"

OWNED_KINDS = (CREDITS, RECEIVABLE, PAYABLE, GRANTED_CREDITS, PREPAID_CREDITS, ADJUSTMENT)
PLATFORM_KINDS = (CREDITS_EXPENSE, WRITE_OFF, GRANTS_EXPENSE, PREPAID_CASH, EXPIRED_CREDITS, ADJUSTMENTS)

# Transaction kinds.
GRANT = "credit_grant"
REQUEST_COST = "request_cost"
LATE_REQUEST_COST = "late_request_cost"
COST_KINDS = (REQUEST_COST, LATE_REQUEST_COST)
EXTRA_CREDIT = "extra_credit"  # a finance grant, or prepaid credits paid for
EXTRA_CREDIT_EXPIRY = "extra_credit_expiry"
EXTRA_CREDIT_TAKE_BACK = "extra_credit_take_back"  # prepaid credits refunded through Stripe
ACCOUNT_ADJUSTMENT = "account_adjustment"


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


def extra_credits(source: str, account: str, period: str) -> str:
    """The ledger account of a grant (``source`` "grant") or of prepaid credits ("prepaid") given in ``period``."""
    return f"{GRANTED_CREDITS if source == 'grant' else PREPAID_CREDITS}:{account}:{period}"


def adjustment(account: str, period: str) -> str:
    return f"{ADJUSTMENT}:{account}:{period}"


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
