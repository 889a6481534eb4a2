"""Inference providers and each one's cost-collection health."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, CheckConstraint, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from metering.models.base import Base, UTCDateTime

PRICING_MODES = ("cost_endpoint", "compute_time")


class Provider(Base):
    """A registered provider (SPEC §4). ``cost_token_encrypted`` is Fernet ciphertext, never returned."""

    __tablename__ = "providers"
    __table_args__ = (
        CheckConstraint("pricing IN ('cost_endpoint', 'compute_time')", name="pricing"),
        CheckConstraint("default_estimate_nano_usd >= 0", name="estimate_non_negative"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    request_id_header: Mapped[str] = mapped_column(String(128), default="Inference-Id")
    pricing: Mapped[str] = mapped_column(String(16))
    cost_endpoint: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    cost_token_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    credit_eligible: Mapped[bool] = mapped_column(Boolean, default=True)
    default_estimate_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    # {"cpu-basic": 120000}: integer nano-USD per second of each hardware.
    hardware_prices_nano_usd_per_second: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # {"org/name": {"input_nano_usd_per_million_tokens": int, "output_nano_usd_per_million_tokens": int}}
    models: Mapped[dict[str, dict[str, int]]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ProviderCollectionState(Base):
    """Back-off and circuit-breaker state of a provider's cost endpoint, shared by all workers."""

    __tablename__ = "provider_collection_state"

    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"), primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    backoff_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    circuit_open_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CostEstimate(Base):
    """Rolling mean of recent actual costs per (provider, model), used to size holds."""

    __tablename__ = "cost_estimates"

    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    mean_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
