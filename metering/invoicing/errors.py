"""Errors of period close, invoices, Stripe sync and Stripe webhooks."""

from metering.errors import Conflict, InvalidInput, MeteringError, ServiceUnavailable


class PeriodNotEnded(InvalidInput):
    """A period can only be closed once it is over."""


class PeriodClosedOutOfOrder(Conflict):
    """A later period is already closed: the carried remainders would no longer chain in order."""


class InvoicingInvariantBroken(MeteringError):
    """Stored state contradicts a rule invoicing relies on (e.g. a free account with a receivable)."""


class InvalidWebhookSignature(InvalidInput):
    """The ``Stripe-Signature`` header is missing, malformed, stale or does not sign this body."""


class InvalidWebhookPayload(InvalidInput):
    """A correctly signed body that is not a Stripe event."""


class WebhookNotConfigured(ServiceUnavailable):
    """No webhook secret is configured, so no event can be trusted."""
