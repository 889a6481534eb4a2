"""Errors of prepaid top-ups bought through Stripe.

MeteringError
├── InvalidInput
│   └── InvalidTopUp            an amount a top-up cannot have (422)
├── Conflict
│   └── TopUpKeyReused          an Idempotency-Key already used for a different top-up (409)
├── ServiceUnavailable
│   ├── TopUpsNotConfigured     no Stripe API key is set (503)
│   └── StripeUnavailable       Stripe could not be reached, or failed on its side; try again (503)
└── StripeRefused               Stripe answered the request with an error retrying will not fix (502)
"""

from __future__ import annotations

from metering.errors import Conflict, InvalidInput, MeteringError, ServiceUnavailable


class InvalidTopUp(InvalidInput):
    """Not a whole number of cents, or outside the bounds of one top-up."""


class TopUpKeyReused(Conflict):
    """Stripe already saw this Idempotency-Key with different parameters (another amount)."""


class TopUpsNotConfigured(ServiceUnavailable):
    """``STRIPE_API_KEY`` is not set, so no payment can be asked for."""


class StripeUnavailable(ServiceUnavailable):
    """A connection error, rate limit or server error of Stripe, after the client's retries."""


class StripeRefused(MeteringError):
    """Stripe rejected the request (authentication, a missing customer, invalid parameters)."""
