"""Encryption at rest of provider cost-endpoint tokens (Fernet, key ``METERING_SECRET_KEY``)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from metering.config import get_settings
from metering.errors import MeteringError


class SecretKeyError(MeteringError):
    """The secret key is missing, malformed, or not the key a token was encrypted with."""


def _fernet() -> Fernet:
    try:
        return Fernet(get_settings().secret_key.encode())
    except (ValueError, TypeError) as exc:
        raise SecretKeyError("METERING_SECRET_KEY must be 32 bytes of urlsafe base64 (Fernet format)") from exc


def encrypt_token(token: str) -> bytes:
    return _fernet().encrypt(token.encode())


def decrypt_token(ciphertext: bytes) -> str:
    try:
        return _fernet().decrypt(ciphertext).decode()
    except InvalidToken as exc:
        raise SecretKeyError("a provider token cannot be decrypted with the configured METERING_SECRET_KEY") from exc
