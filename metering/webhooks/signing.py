"""Standard Webhooks signatures, with the ``standardwebhooks`` package.

The reference implementation of the specification is used rather than an HMAC written
here: the signed content (``{id}.{timestamp}.{body}``), the secret's ``whsec_`` base64 form
and the ``v1,`` signature format are exactly what receivers' own verifiers (the same
library in every language) check.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

from metering.config import WEBHOOK_SECRET_PREFIX

SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh endpoint secret, ``whsec_`` and base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signed_headers(*, secret: str, webhook_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers of one attempt.

    The id is the event's, the same on every attempt; the timestamp is the attempt's, so a
    retry days later still passes the receiver's replay window.
    """
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
    }
