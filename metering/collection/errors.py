"""Errors of cost collection: a provider's cost endpoint failing as a whole."""

from __future__ import annotations

from typing import Literal

from metering.errors import ServiceUnavailable

FailureKind = Literal["timeout", "connect", "5xx", "429", "4xx", "bad_response"]


class ProviderUnavailable(ServiceUnavailable):
    """The cost endpoint could not give a usable answer for a whole batch; nothing of it is written.

    ``kind`` is one of ``timeout``, ``connect``, ``5xx``, ``429``, ``4xx`` (the
    provider refused us, e.g. a wrong token) or ``bad_response`` (an answer that is
    not the protocol: wrong content type, truncated or non-JSON body, wrong shape,
    too large). ``retry_after_seconds`` is the provider's ``Retry-After``, when given.
    """

    def __init__(
        self,
        detail: str,
        *,
        provider: str,
        kind: FailureKind,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(detail, provider=provider, kind=kind)
        self.provider = provider
        self.kind = kind
        self.retry_after_seconds = retry_after_seconds
