"""Job ``sync-stripe``: push closed invoices' lines to Stripe as invoice items, then their invoices."""

from __future__ import annotations

from metering.db import Database
from metering.invoicing.stripe_sync import stripe_sync


async def run_once(database: Database, **_options: object) -> str:
    """Safe to rerun at any time, and after a crash at any point: no line is ever sent twice."""
    result = await stripe_sync.sync_invoices(database)
    return result.describe()
