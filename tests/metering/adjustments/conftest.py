"""Fixtures of the adjustment tests: the invoicing tests' seeded accounts and providers, and their localstripe."""

from __future__ import annotations

from tests.metering.invoicing.conftest import localstripe_url, seeded, stripe_settings

__all__ = ["localstripe_url", "seeded", "stripe_settings"]
