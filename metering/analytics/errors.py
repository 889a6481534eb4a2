"""Errors of the user-facing read views."""

from metering.errors import InvalidInput


class InvalidTimeRange(InvalidInput):
    """``from``/``to`` unparsable, reversed, or spanning more buckets than one answer may hold."""


class InvalidCursor(InvalidInput):
    """A pagination cursor this service did not issue."""
