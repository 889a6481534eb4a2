"""Errors of webhook endpoints and deliveries."""

from metering.errors import Conflict, InvalidInput, NotFound


class UnsafeWebhookUrl(InvalidInput):
    """Webhooks go to public http(s) URLs only: not loopback, private, link-local or unresolvable hosts."""


class TooManyWebhookEndpoints(InvalidInput):
    """An org has a bounded number of endpoints."""


class WebhookEndpointNotFound(NotFound):
    pass


class WebhookDeliveryNotFound(NotFound):
    pass


class WebhookEndpointDeleted(Conflict):
    """A delivery to a deleted endpoint cannot be replayed."""
