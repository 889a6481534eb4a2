"""The event types of SPEC §11 and who receives each."""

from __future__ import annotations

CREDITS_THRESHOLD = "credits.threshold"
CREDITS_EXHAUSTED = "credits.exhausted"
SPENDING_LIMIT_THRESHOLD = "spending_limit.threshold"
SPENDING_LIMIT_REACHED = "spending_limit.reached"
ACCOUNT_DELINQUENT = "account.delinquent"
ACCOUNT_REINSTATED = "account.reinstated"
INVOICE_CREATED = "invoice.created"
PROVIDER_QUARANTINE = "provider.quarantine"

EVENT_TYPES = (
    CREDITS_THRESHOLD,
    CREDITS_EXHAUSTED,
    SPENDING_LIMIT_THRESHOLD,
    SPENDING_LIMIT_REACHED,
    ACCOUNT_DELINQUENT,
    ACCOUNT_REINSTATED,
    INVOICE_CREATED,
    PROVIDER_QUARANTINE,
)

# Sent to the platform endpoint only: a provider's answers are finance's business, not the account's.
PLATFORM_ONLY = frozenset({PROVIDER_QUARANTINE})
