"""The root of every expected failure in Metering.

MeteringError
├── NotFound                    a named thing does not exist (404)
│   ├── AccountNotFound
│   └── ProviderNotFound
├── Unauthenticated             no valid credentials (401)
├── Forbidden                   caller may not do this (403)
├── InvalidInput                domain-level validation failed (422)
├── Conflict                    the request clashes with stored state (409)
│   └── LedgerConflict          a second, different posting for one idempotency key
└── ServiceUnavailable          a dependency is down (503)
    ├── ProviderUnavailable     a provider's cost endpoint failed (see metering.collection)
    └── StatementTimeout        PostgreSQL cancelled a statement at its statement_timeout (see metering.db)

HTTP statuses are assigned in api/errors.py only.
"""

from __future__ import annotations


class MeteringError(Exception):
    """Root of Metering's expected errors; ``detail`` is safe to show to callers."""

    def __init__(self, detail: str = "", **context: object) -> None:
        super().__init__(detail or self.__class__.__name__)
        self.detail = detail or self.__class__.__name__
        self.context = context


class NotFound(MeteringError):
    pass


class AccountNotFound(NotFound):
    pass


class ProviderNotFound(NotFound):
    pass


class Unauthenticated(MeteringError):
    pass


class Forbidden(MeteringError):
    pass


class InvalidInput(MeteringError):
    pass


class Conflict(MeteringError):
    pass


class LedgerConflict(Conflict):
    pass


class ServiceUnavailable(MeteringError):
    pass


class StatementTimeout(ServiceUnavailable):
    """A statement ran past the connection's ``statement_timeout`` and the server cancelled it."""
