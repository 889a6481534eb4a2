"""Every table, imported so Alembic and the tests see one complete MetaData."""

from metering.models.accounts import Account, AuditEvent, DisabledProvider, Membership
from metering.models.base import Base
from metering.models.billing import AccountPeriod, Hold, Period
from metering.models.events import AlertSettings, Event
from metering.models.invoicing import Invoice, InvoiceLine, StripeEvent
from metering.models.ledger import LedgerAccount, LedgerEntry, LedgerTransaction
from metering.models.providers import CostEstimate, Provider, ProviderCollectionState
from metering.models.usage import UsageRecord
from metering.models.usage_rollup import UsageRollup
from metering.models.webhooks import WebhookDelivery, WebhookEndpoint

__all__ = [
    "Account",
    "AccountPeriod",
    "AlertSettings",
    "AuditEvent",
    "Base",
    "CostEstimate",
    "DisabledProvider",
    "Event",
    "Hold",
    "Invoice",
    "InvoiceLine",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerTransaction",
    "Membership",
    "Period",
    "Provider",
    "ProviderCollectionState",
    "StripeEvent",
    "UsageRecord",
    "UsageRollup",
    "WebhookDelivery",
    "WebhookEndpoint",
]
