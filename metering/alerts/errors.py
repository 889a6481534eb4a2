"""Errors of alert thresholds."""

from metering.errors import InvalidInput


class InvalidAlertThresholds(InvalidInput):
    """Thresholds are whole percentages from 1 to 100, at most ten of each kind."""
