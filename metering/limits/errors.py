"""Errors of spending limits and disabled providers."""

from metering.errors import InvalidInput


class SpendingLimitNotApplicable(InvalidInput):
    """A spending limit caps pay-as-you-go; the account's plan has none."""


class NegativeSpendingLimit(InvalidInput):
    """A spending limit is a non-negative nano-USD amount or null."""


class UnknownProviders(InvalidInput):
    """Only registered providers can be disabled."""
