"""Settings from the environment (``METERING_`` prefix; Stripe keys keep their own names)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metering.money import NANO_PER_USD

MAX_COST_BATCH = 10_000
EMBEDDED_DEV_TOKEN = "metering-dev-token"
_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev", EMBEDDED_DEV_TOKEN}


class PlanTerms(BaseModel):
    """Monthly credits of a plan; orgs multiply ``credits_nano_usd`` by seats."""

    credits_nano_usd: int = Field(ge=0)
    per_seat: bool = False
    pay_as_you_go: bool = False
    kind: Literal["user", "org"] = "user"


def default_plans() -> dict[str, PlanTerms]:
    return {
        "free": PlanTerms(credits_nano_usd=100_000_000, kind="user"),
        "pro": PlanTerms(credits_nano_usd=2_000_000_000, pay_as_you_go=True, kind="user"),
        "team": PlanTerms(credits_nano_usd=2_000_000_000, per_seat=True, pay_as_you_go=True, kind="org"),
        "enterprise": PlanTerms(credits_nano_usd=2_000_000_000, per_seat=True, pay_as_you_go=True, kind="org"),
    }


class Settings(BaseSettings):
    """Every knob of Metering. ``environment=embedded`` is the one-process SQLite default."""

    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    environment: Literal["embedded", "production"] = "embedded"
    data_dir: Path = Path(".metering")
    database_url: str = ""
    service_tokens: str = ""
    secret_key: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # The authorize route's fast lane (``api.fast_lane``); off, every request takes FastAPI's path.
    authorize_fast_lane: bool = True
    max_records_per_post: int = Field(default=5_000, ge=1, le=5_000)
    max_future_skew_seconds: int = 24 * 3600
    # A record whose started_at is older than this is rejected (SPEC §5.2): its month may be closed.
    max_record_age_days: int = Field(default=35, ge=1, le=3650)
    hold_ttl_seconds: int = Field(default=15 * 60, ge=1)

    cost_batch_size: int = Field(default=MAX_COST_BATCH, ge=1)
    cost_ceiling_nano_usd: int = Field(default=100 * NANO_PER_USD, ge=0)
    cost_max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    cost_connect_timeout_seconds: float = 5.0
    cost_read_timeout_seconds: float = 30.0
    cost_lease_seconds: int = Field(default=120, ge=1)
    pending_max_age_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    period_grace_hours: int = Field(default=48, ge=0)

    # PostgreSQL statement_timeout of each kind of process; 0 would mean none, so at least 1 ms.
    api_statement_timeout_ms: int = Field(default=5_000, ge=1)
    jobs_statement_timeout_ms: int = Field(default=120_000, ge=1)
    export_statement_timeout_ms: int = Field(default=3_600_000, ge=1)
    # The most points a usage time series may have (hours or days × nothing else): more is a 422.
    usage_max_series_points: int = Field(default=24 * 400, ge=1)

    plans: dict[str, PlanTerms] = Field(default_factory=default_plans)

    stripe_api_key: str = Field(default="", validation_alias=AliasChoices("STRIPE_API_KEY", "METERING_STRIPE_API_KEY"))
    stripe_api_base: str = Field(
        default="", validation_alias=AliasChoices("STRIPE_API_BASE", "METERING_STRIPE_API_BASE")
    )
    stripe_webhook_secret: str = Field(
        default="", validation_alias=AliasChoices("STRIPE_WEBHOOK_SECRET", "METERING_STRIPE_WEBHOOK_SECRET")
    )

    @field_validator("cost_batch_size")
    @classmethod
    def _batch_within_protocol(cls, value: int) -> int:
        if value > MAX_COST_BATCH:
            raise ValueError(f"cost_batch_size {value} exceeds the protocol maximum of {MAX_COST_BATCH}")
        return value

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        """Production needs real secrets; the embedded default makes its own and keeps them on disk."""
        if self.environment == "production":
            if not self.database_url:
                raise ValueError("METERING_DATABASE_URL is required in production")
            for name in ("service_tokens", "secret_key"):
                if getattr(self, name).strip().lower() in _PLACEHOLDERS:
                    raise ValueError(f"METERING_{name.upper()} must be set to a real secret in production")
            if not (self.jwt_secret or self.jwt_public_key):
                raise ValueError("METERING_JWT_SECRET or METERING_JWT_PUBLIC_KEY is required in production")
            if self.jwt_secret and self.jwt_secret.lower() in _PLACEHOLDERS:
                raise ValueError("METERING_JWT_SECRET must be a real secret in production")
            return self
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'metering.db').as_posix()}"
        if not self.service_tokens:
            self.service_tokens = EMBEDDED_DEV_TOKEN
        if not self.secret_key or not self.jwt_secret:
            stored = _embedded_secrets(self.data_dir)
            self.secret_key = self.secret_key or stored["secret_key"]
            self.jwt_secret = self.jwt_secret or stored["jwt_secret"]
        return self

    @property
    def service_token_list(self) -> list[str]:
        return [token.strip() for token in self.service_tokens.split(",") if token.strip()]

    @property
    def migrates_on_open(self) -> bool:
        """The embedded SQLite file is migrated by whichever command opens it first, so a fresh
        machine needs no set-up; a PostgreSQL database is migrated explicitly (``metering db upgrade``),
        once, by whoever deploys."""
        return self.database_url.startswith("sqlite")


def _embedded_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets for the embedded default, made once per data folder so encrypted tokens stay readable."""
    path = data_dir / "secrets.env"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    if "secret_key" not in values or "jwt_secret" not in values:
        values.setdefault("secret_key", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        values.setdefault("jwt_secret", secrets.token_urlsafe(32))
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    return values


_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings: read from the environment once, or those given to ``set_settings``."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def set_settings(settings: Settings | None) -> None:
    """Replace the process's settings (the app factory and tests do this)."""
    global _current
    _current = settings
