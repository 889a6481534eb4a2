"""Errors of user-facing authorization."""

from metering.errors import Forbidden


class NotPermitted(Forbidden):
    """The caller knows the account exists but may not do this to it."""
