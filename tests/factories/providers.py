"""Small factories for providers."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Provider
from metering.providers.service import ProviderRegistration, provider_service


async def create_provider(
    session: AsyncSession,
    provider_id: str = "together",
    *,
    pricing: str = "cost_endpoint",
    url: str = "http://127.0.0.1:9",
    cost_endpoint: str | None = None,
    cost_token: str = "provider-token",
    credit_eligible: bool = True,
    default_estimate_nano_usd: int = 100_000,
    request_id_header: str = "Inference-Id",
    hardware_prices_nano_usd_per_second: dict[str, int] | None = None,
) -> Provider:
    registration = ProviderRegistration(
        url=url,
        pricing=pricing,
        request_id_header=request_id_header,
        cost_endpoint=(cost_endpoint or f"{url}/billing/costs") if pricing == "cost_endpoint" else None,
        cost_token=cost_token if pricing == "cost_endpoint" else None,
        credit_eligible=credit_eligible,
        default_estimate_nano_usd=default_estimate_nano_usd,
        hardware_prices_nano_usd_per_second=hardware_prices_nano_usd_per_second
        or ({"cpu-basic": 120_000, "gpu-a10g": 120_000} if pricing == "compute_time" else {}),
    )
    provider, _ = await provider_service.upsert(session, provider_id=provider_id, registration=registration)
    return provider
