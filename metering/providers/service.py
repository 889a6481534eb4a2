"""Provider registration (SPEC §4): the platform PUTs it, the cost job and pricing read it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from metering.balances.repository import balances_repository
from metering.config import get_settings
from metering.errors import ProviderNotFound
from metering.models import Provider
from metering.periods import utcnow
from metering.providers.errors import InvalidProviderRegistration
from metering.providers.repository import provider_repository
from metering.providers.secrets import decrypt_token, encrypt_token


@dataclass(frozen=True)
class ModelPrice:
    input_nano_usd_per_million_tokens: int
    output_nano_usd_per_million_tokens: int


@dataclass(frozen=True)
class ProviderRegistration:
    url: str
    pricing: str
    request_id_header: str = "Inference-Id"
    cost_endpoint: str | None = None
    # None keeps the stored token on update; the token is write-only.
    cost_token: str | None = None
    credit_eligible: bool = True
    default_estimate_nano_usd: int = 0
    hardware_prices_nano_usd_per_second: dict[str, int] = field(default_factory=dict)
    models: dict[str, ModelPrice] = field(default_factory=dict)


class ProviderService:
    async def upsert(
        self, session: AsyncSession, *, provider_id: str, registration: ProviderRegistration
    ) -> tuple[Provider, bool]:
        """Create or replace a registration; returns it and whether it was created."""
        provider = await provider_repository.get(session, provider_id)
        created = provider is None
        has_token = registration.cost_token is not None or (
            provider is not None and provider.cost_token_encrypted is not None
        )
        _check_registration(registration, has_token=has_token)
        now = utcnow()
        if provider is None:
            provider = Provider(id=provider_id, created_at=now)
            session.add(provider)
        provider.url = registration.url
        provider.pricing = registration.pricing
        provider.request_id_header = registration.request_id_header
        provider.cost_endpoint = registration.cost_endpoint
        if registration.cost_token is not None:
            provider.cost_token_encrypted = encrypt_token(registration.cost_token)
        eligibility_changed = not created and provider.credit_eligible != registration.credit_eligible
        provider.credit_eligible = registration.credit_eligible
        provider.default_estimate_nano_usd = registration.default_estimate_nano_usd
        provider.hardware_prices_nano_usd_per_second = dict(registration.hardware_prices_nano_usd_per_second)
        provider.models = {
            name: {
                "input_nano_usd_per_million_tokens": price.input_nano_usd_per_million_tokens,
                "output_nano_usd_per_million_tokens": price.output_nano_usd_per_million_tokens,
            }
            for name, price in registration.models.items()
        }
        provider.updated_at = now
        await session.flush()
        if eligibility_changed:
            # Its holds and pending estimates move between what credits may and may not pay.
            await balances_repository.recount_payg_only(session, provider_id=provider_id)
        return provider, created

    async def get(self, session: AsyncSession, provider_id: str) -> Provider:
        provider = await provider_repository.get(session, provider_id)
        if provider is None:
            raise ProviderNotFound(f"no provider {provider_id!r}", provider=provider_id)
        return provider

    async def list_all(self, session: AsyncSession) -> list[Provider]:
        return await provider_repository.list_all(session)

    def cost_token(self, provider: Provider) -> str | None:
        """The decrypted bearer token for the cost endpoint; only cost collection calls this."""
        return decrypt_token(provider.cost_token_encrypted) if provider.cost_token_encrypted else None


def _check_registration(registration: ProviderRegistration, *, has_token: bool) -> None:
    if registration.pricing == "cost_endpoint":
        if not registration.cost_endpoint:
            raise InvalidProviderRegistration("cost_endpoint pricing needs a cost_endpoint URL")
        if not has_token:
            raise InvalidProviderRegistration("cost_endpoint pricing needs a cost_token")
    elif registration.pricing == "compute_time":
        if not registration.hardware_prices_nano_usd_per_second:
            raise InvalidProviderRegistration("compute_time pricing needs hardware_prices_nano_usd_per_second")
    else:
        raise InvalidProviderRegistration(f"unknown pricing mode {registration.pricing!r}")
    # An estimate is held against limits and summed with others: one above what a single request
    # may cost (costs above it are quarantined) is a mistake, and could overflow those sums.
    ceiling = get_settings().cost_ceiling_nano_usd
    if registration.default_estimate_nano_usd > ceiling:
        raise InvalidProviderRegistration(
            f"default_estimate_nano_usd {registration.default_estimate_nano_usd} exceeds the per-request "
            f"cost ceiling of {ceiling}"
        )


provider_service = ProviderService()
