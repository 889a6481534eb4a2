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
MAX_ALERT_THRESHOLDS = 10
WEBHOOK_SECRET_PREFIX = "whsec_"


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
    # PostgreSQL connections of each process's pool (as many again may open briefly under load); an
    # API process also keeps up to as many for authorize's decisions (``metering.hot_path.pg_connections``).
    database_pool_size: int = Field(default=10, ge=1, le=1_000)
    # The URL is a PgBouncer in transaction mode: no prepared statement outlives its transaction and
    # the statement timeout is set per transaction (``metering.db``).
    database_pgbouncer: bool = False
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
    # In a month's last this many hours the grant-credits job grants next month's credits too, so the
    # month's first requests find them granted (``metering.credits.service``); 0 grants on first use only.
    credits_grant_ahead_hours: int = Field(default=6, ge=0, le=24 * 27)

    # PostgreSQL statement_timeout of each kind of process; 0 would mean none, so at least 1 ms.
    api_statement_timeout_ms: int = Field(default=5_000, ge=1)
    jobs_statement_timeout_ms: int = Field(default=120_000, ge=1)
    export_statement_timeout_ms: int = Field(default=3_600_000, ge=1)
    # The most points a usage time series may have (hours or days × nothing else): more is a 422.
    usage_max_series_points: int = Field(default=24 * 400, ge=1)

    plans: dict[str, PlanTerms] = Field(default_factory=default_plans)

    # Alert thresholds of an account that set none (``PUT /v1/accounts/{name}/billing/alerts``), in percent.
    alert_credits_percent: list[int] = Field(default_factory=lambda: [50, 80, 100])
    alert_spending_limit_percent: list[int] = Field(default_factory=lambda: [80, 100])

    # Outbound webhooks (SPEC §11). The platform endpoint receives every event; it is the
    # operator's own, so its URL is not held to the private-range rule of org endpoints.
    webhook_url: str = ""
    webhook_secret: str = Field(default="", repr=False)
    # Lets org endpoints (and their deliveries) name loopback and private hosts: for tests and closed networks.
    webhook_allow_private_urls: bool = False
    # One delivery attempt, DNS to status line, is given up after this long.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # A claimed delivery whose worker died is sent again after this long; more than the timeout.
    webhook_lease_seconds: int = Field(default=60, ge=1)
    # Attempt n is retried after base × 2^(n-1) (capped at 6 h), for this long after the event.
    webhook_retry_base_seconds: float = Field(default=5.0, ge=0)
    webhook_retry_window_seconds: int = Field(default=3 * 24 * 3600, ge=0)
    # Deliveries in flight at once in one deliverer.
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)

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

    @field_validator("alert_credits_percent", "alert_spending_limit_percent")
    @classmethod
    def _percentages(cls, value: list[int]) -> list[int]:
        if len(value) > MAX_ALERT_THRESHOLDS or any(not 1 <= percent <= 100 for percent in value):
            raise ValueError(f"alert thresholds are at most {MAX_ALERT_THRESHOLDS} whole percentages from 1 to 100")
        return sorted(set(value))

    @model_validator(mode="after")
    def _webhooks(self) -> Settings:
        """A platform endpoint needs a Standard Webhooks secret, and a lease that outlasts an attempt."""
        if self.webhook_url:
            if not self.webhook_url.startswith(("http://", "https://")):
                raise ValueError("METERING_WEBHOOK_URL must be an http:// or https:// URL")
            if not is_webhook_secret(self.webhook_secret):
                raise ValueError(
                    "METERING_WEBHOOK_SECRET must be whsec_ followed by base64 of 24 to 64 random bytes "
                    "when METERING_WEBHOOK_URL is set"
                )
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                f"METERING_WEBHOOK_LEASE_SECONDS ({self.webhook_lease_seconds}) must exceed "
                f"METERING_WEBHOOK_TIMEOUT_SECONDS ({self.webhook_timeout_seconds}), or a slow attempt is sent twice"
            )
        return self

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


def is_webhook_secret(value: str) -> bool:
    """``whsec_`` and base64 of 24 to 64 bytes: the Standard Webhooks secret format."""
    if not value.startswith(WEBHOOK_SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(value[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except ValueError:
        return False
    return 24 <= len(key) <= 64


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
