"""Provider registration (internal) and the public provider list (SPEC §4, §5.3)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import ServiceAuth, SessionDep
from api.schemas.errors import BODY_TOO_LARGE, NO_SERVICE_TOKEN, UNREADABLE_BODY, error_responses
from api.schemas.providers import PROVIDER_ID_PATTERN, ProviderRead, ProviderUpdate
from metering.models import Provider
from metering.providers.service import ModelPrice, ProviderRegistration, provider_service

internal_router = APIRouter(prefix="/internal/v1", tags=["internal"], dependencies=[ServiceAuth])
public_router = APIRouter(prefix="/v1", tags=["providers"])

ProviderId = Annotated[str, Path(pattern=PROVIDER_ID_PATTERN, examples=["together"])]


def _read(provider: Provider) -> ProviderRead:
    return ProviderRead(
        id=provider.id,
        url=provider.url,
        pricing=provider.pricing,
        request_id_header=provider.request_id_header,
        credit_eligible=provider.credit_eligible,
        models=provider.models or {},
    )


@internal_router.put(
    "/providers/{provider_id}",
    response_model=ProviderRead,
    summary="Register or update a provider",
    responses=error_responses(
        {
            400: UNREADABLE_BODY,
            401: NO_SERVICE_TOKEN,
            413: BODY_TOO_LARGE,
            422: "malformed id or body, or fields missing for the pricing mode",
        }
    ),
)
async def put_provider(provider_id: ProviderId, body: ProviderUpdate, session: SessionDep) -> ProviderRead:
    """The registration of SPEC §4; the cost token is stored encrypted and never read back."""
    registration = ProviderRegistration(
        url=body.url,
        pricing=body.pricing,
        request_id_header=body.request_id_header,
        cost_endpoint=body.cost_endpoint,
        cost_token=body.cost_token,
        credit_eligible=body.credit_eligible,
        default_estimate_nano_usd=body.default_estimate_nano_usd,
        hardware_prices_nano_usd_per_second=body.hardware_prices_nano_usd_per_second,
        models={name: ModelPrice(**price.model_dump()) for name, price in body.models.items()},
    )
    provider, _ = await provider_service.upsert(session, provider_id=provider_id, registration=registration)
    return _read(provider)


@public_router.get("/providers", response_model=list[ProviderRead], summary="List providers")
async def list_providers(session: SessionDep) -> list[ProviderRead]:
    """Every registered provider with its pricing mode and model prices (public; never a token)."""
    return [_read(p) for p in await provider_service.list_all(session)]


@public_router.get(
    "/providers/{provider_id}",
    response_model=ProviderRead,
    summary="Read one provider",
    responses=error_responses({404: "no such provider", 422: "malformed provider id"}),
)
async def get_provider(provider_id: Annotated[str, Path(examples=["together"])], session: SessionDep) -> ProviderRead:
    """One provider's public registration (never its token)."""
    return _read(await provider_service.get(session, provider_id))
