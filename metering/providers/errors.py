"""Errors of provider registration."""

from metering.errors import InvalidInput


class InvalidProviderRegistration(InvalidInput):
    """A registration that cannot be used to price requests."""
