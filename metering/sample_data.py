"""Sample providers and accounts for a first look at an empty embedded database.

``seed_sample_data`` is an own-transaction entry point (a command, not a route): it builds its
own ``Database`` from a URL and seeds in one transaction, all or nothing.
"""

from __future__ import annotations

from metering.accounts.service import AccountSync, account_service
from metering.db import Database
from metering.providers.repository import provider_repository
from metering.providers.service import ModelPrice, ProviderRegistration, provider_service

SAMPLE_PROVIDERS = {
    "together": ProviderRegistration(
        url="http://127.0.0.1:9101",
        pricing="cost_endpoint",
        cost_endpoint="http://127.0.0.1:9101/billing/costs",
        cost_token="sample-together-token",
        default_estimate_nano_usd=100_000,
        models={"meta-llama/Llama-3.3-70B-Instruct": ModelPrice(880_000_000, 880_000_000)},
    ),
    "fireworks-ai": ProviderRegistration(
        url="http://127.0.0.1:9102",
        pricing="cost_endpoint",
        cost_endpoint="http://127.0.0.1:9102/billing/costs",
        cost_token="sample-fireworks-token",
        default_estimate_nano_usd=120_000,
    ),
    "hf-inference": ProviderRegistration(
        url="http://127.0.0.1:9103",
        pricing="compute_time",
        hardware_prices_nano_usd_per_second={"cpu-basic": 120_000, "gpu-a10g": 1_000_000},
        default_estimate_nano_usd=240_000,
    ),
}

SAMPLE_ACCOUNTS = {
    "alice": AccountSync(kind="user", plan="pro"),
    "bob": AccountSync(kind="user", plan="free"),
    "acme": AccountSync(kind="org", plan="team", seats=5),
}


async def seed_sample_data(database_url: str) -> bool:
    """Seeds only a database with no providers yet; returns whether it seeded."""
    database = Database(database_url, pool_size=1)
    try:
        async with database.session_scope() as session:
            if await provider_repository.list_all(session):
                return False
            for provider_id, registration in SAMPLE_PROVIDERS.items():
                await provider_service.upsert(session, provider_id=provider_id, registration=registration)
            for name, sync in SAMPLE_ACCOUNTS.items():
                await account_service.upsert_account(session, name=name, sync=sync)
            await account_service.put_member(session, org="acme", user="alice", role="admin")
            await account_service.put_member(session, org="acme", user="bob", role="write")
        return True
    finally:
        await database.dispose()
