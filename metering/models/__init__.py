"""Every table, imported so Alembic and the tests see one complete MetaData."""

from metering.models.accounts import Account, AuditEvent, DisabledProvider, Membership
from metering.models.archive import ArchivedAccountSum, ArchivedLedgerSum, ArchivedPeriod
from metering.models.base import Base
from metering.models.billing import AccountPeriod, Hold, Period
from metering.models.events import AlertSettings, Event
from metering.models.finance import Adjustment, CreditBalance, CreditGrant
from metering.models.invoicing import Invoice, InvoiceLine, StripeEvent
from metering.models.ledger import LedgerAccount, LedgerEntry, LedgerTransaction
from metering.models.providers import CostEstimate, Provider, ProviderCollectionState
from metering.models.reconciliation import Reconciliation, ReconciliationItem, ReconciliationLine
from metering.models.usage import UsageRecord, UsageRequestKey
from metering.models.usage_rollup import UsageRollup
from metering.models.webhooks import WebhookDelivery, WebhookEndpoint

__all__ = [
    "Account",
    "AccountPeriod",
    "Adjustment",
    "AlertSettings",
    "ArchivedAccountSum",
    "ArchivedLedgerSum",
    "ArchivedPeriod",
    "AuditEvent",
    "Base",
    "CostEstimate",
    "CreditBalance",
    "CreditGrant",
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
    "Reconciliation",
    "ReconciliationItem",
    "ReconciliationLine",
    "StripeEvent",
    "UsageRecord",
    "UsageRequestKey",
    "UsageRollup",
    "WebhookDelivery",
    "WebhookEndpoint",
]
