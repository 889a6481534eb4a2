"""Contract of POST /internal/v1/authorize (SPEC §5.1): every reason, provider lists, custom keys, holds."""

from __future__ import annotations

import httpx
import pytest

from metering.authorize.catalog import provider_catalog
from metering.db import Database
from metering.metrics import registry
from metering.models import Account
from tests.metering.authorize.helpers import (
    ESTIMATE,
    FREE_CREDITS,
    PRO_CREDITS,
    disable,
    holds,
    period_row,
    seed,
    set_limit,
    set_period,
    set_status,
)

URL = "/internal/v1/authorize"


@pytest.fixture(autouse=True)
async def seeded(db: Database) -> None:
    provider_catalog.clear()
    await seed(db)


async def ask(client: httpx.AsyncClient, user: str, provider: str = "together", bill_to: str | None = None, **extra):
    response = await client.post(
        URL, json={"user": user, "bill_to": bill_to, "provider": provider, "model": "org/m", **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def refused(reason: str, billing_account: str | None, **figures: int | None) -> dict:
    return {
        "allowed": False,
        "billing_account": billing_account,
        "providers": [],
        "reason": reason,
        "hold_id": None,
        "credits_remaining_nano_usd": figures.get("credits"),
        "spending_limit_remaining_nano_usd": figures.get("limit"),
    }


class TestAllowed:
    async def test_pro_user_gets_a_hold_of_the_estimate(self, client: httpx.AsyncClient, db: Database) -> None:
        body = await ask(client, "alice")
        hold_id = body.pop("hold_id")
        assert body == {
            "allowed": True,
            "billing_account": "alice",
            "providers": ["together"],
            "reason": None,
            "credits_remaining_nano_usd": PRO_CREDITS - ESTIMATE,
            "spending_limit_remaining_nano_usd": None,
        }
        [hold] = await holds(db)
        assert (hold.id, hold.account_name, hold.user_name, hold.provider_id, hold.amount_nano_usd, hold.status) == (
            hold_id,
            "alice",
            "alice",
            "together",
            ESTIMATE,
            "held",
        )
        row = await period_row(db, "alice")
        assert (row.credits_granted_nano_usd, row.held_nano_usd) == (PRO_CREDITS, ESTIMATE)

    async def test_holds_add_up(self, client: httpx.AsyncClient, db: Database) -> None:
        first = await ask(client, "alice")
        second = await ask(client, "alice", provider="fireworks-ai")
        assert first["credits_remaining_nano_usd"] == PRO_CREDITS - ESTIMATE
        assert second["credits_remaining_nano_usd"] == PRO_CREDITS - ESTIMATE - 250_000
        assert (await period_row(db, "alice")).held_nano_usd == ESTIMATE + 250_000

    async def test_unknown_user_is_created_on_the_free_plan(self, client: httpx.AsyncClient, db: Database) -> None:
        body = await ask(client, "newbie")
        assert (body["allowed"], body["billing_account"]) == (True, "newbie")
        assert body["credits_remaining_nano_usd"] == FREE_CREDITS - ESTIMATE
        async with db.session_scope() as session:
            account = await session.get(Account, "newbie")
            assert (account.kind, account.plan) == ("user", "free")

    async def test_bill_to_org_pays_from_shared_credits(self, client: httpx.AsyncClient, db: Database) -> None:
        body = await ask(client, "bob", bill_to="acme")
        assert (body["allowed"], body["billing_account"]) == (True, "acme")
        assert body["credits_remaining_nano_usd"] == 2 * PRO_CREDITS - ESTIMATE
        assert (await period_row(db, "acme")).held_nano_usd == ESTIMATE
        assert await period_row(db, "bob") is None

    async def test_counts_decisions(self, client: httpx.AsyncClient) -> None:
        def count(reason: str) -> float:
            return registry.get_sample_value("metering_authorize_total", {"reason": reason}) or 0.0

        allowed, unknown = count("allowed"), count("unknown_provider")
        await ask(client, "alice")
        await ask(client, "alice", provider="nowhere")
        assert (count("allowed") - allowed, count("unknown_provider") - unknown) == (1.0, 1.0)


class TestProviders:
    async def test_unknown_ones_dropped_order_kept(self, client: httpx.AsyncClient, db: Database) -> None:
        body = await ask(client, "alice", provider="nowhere fireworks-ai  together fireworks-ai")
        assert body["providers"] == ["fireworks-ai", "together"]
        [hold] = await holds(db)
        assert (hold.provider_id, hold.amount_nano_usd) == ("fireworks-ai", 250_000)

    async def test_none_registered_is_unknown_provider(self, client: httpx.AsyncClient, db: Database) -> None:
        assert await ask(client, "alice", provider="nowhere elsewhere") == refused("unknown_provider", "alice")
        assert await holds(db) == []

    async def test_disabled_ones_are_filtered(self, client: httpx.AsyncClient, db: Database) -> None:
        await disable(db, "acme", ["together"])
        body = await ask(client, "alice", provider="together fireworks-ai", bill_to="acme")
        assert (body["allowed"], body["providers"]) == (True, ["fireworks-ai"])
        assert body["credits_remaining_nano_usd"] == 2 * PRO_CREDITS - 250_000

    async def test_all_disabled_is_provider_disabled(self, client: httpx.AsyncClient, db: Database) -> None:
        await disable(db, "acme", ["together", "fireworks-ai"])
        body = await ask(client, "alice", provider="together nowhere fireworks-ai", bill_to="acme")
        assert body == refused("provider_disabled", "acme")
        # The org's switches do not follow its members when they pay themselves.
        assert (await ask(client, "alice", provider="together"))["allowed"] is True

    async def test_free_plan_only_offered_credit_eligible(self, client: httpx.AsyncClient, db: Database) -> None:
        body = await ask(client, "bob", provider="paid-only together")
        assert (body["allowed"], body["providers"]) == (True, ["together"])
        only_paid = await ask(client, "bob", provider="paid-only")
        assert only_paid == refused("credits_exhausted", "bob", credits=FREE_CREDITS - ESTIMATE)


class TestRefusals:
    async def test_user_name_of_an_org(self, client: httpx.AsyncClient) -> None:
        assert await ask(client, "acme") == refused("unknown_account", None)

    async def test_bill_to_names_no_account(self, client: httpx.AsyncClient) -> None:
        assert await ask(client, "alice", bill_to="ghost") == refused("unknown_account", None)
        assert await ask(client, "alice", bill_to="not a valid / name") == refused("unknown_account", None)

    async def test_not_a_member(self, client: httpx.AsyncClient, db: Database) -> None:
        assert await ask(client, "carol", bill_to="acme") == refused("not_a_member", None)
        async with db.session_scope() as session:
            assert (await session.get(Account, "carol")).plan == "free"

    async def test_bill_to_a_user_is_not_eligible(self, client: httpx.AsyncClient) -> None:
        assert await ask(client, "bob", bill_to="alice") == refused("bill_to_not_eligible", None)

    async def test_credits_exhausted(self, client: httpx.AsyncClient, db: Database) -> None:
        await set_period(db, "bob", credits_used_nano_usd=FREE_CREDITS - ESTIMATE + 1)
        assert await ask(client, "bob") == refused("credits_exhausted", "bob", credits=ESTIMATE - 1)
        await set_period(db, "bob", credits_used_nano_usd=FREE_CREDITS - ESTIMATE)
        assert (await ask(client, "bob"))["credits_remaining_nano_usd"] == 0
        assert await ask(client, "bob") == refused("credits_exhausted", "bob", credits=0)

    async def test_pending_estimates_count_against_credits(self, client: httpx.AsyncClient, db: Database) -> None:
        await set_period(
            db, "bob", credits_used_nano_usd=FREE_CREDITS - 3 * ESTIMATE, pending_estimate_nano_usd=2 * ESTIMATE
        )
        assert (await ask(client, "bob"))["credits_remaining_nano_usd"] == 0
        assert (await ask(client, "bob"))["reason"] == "credits_exhausted"

    async def test_spending_limit_reached(self, client: httpx.AsyncClient, db: Database) -> None:
        # solo-org has no seats, so no credits: every estimate is pay-as-you-go.
        await set_limit(db, "solo-org", 250_000)
        first = await ask(client, "alice", bill_to="solo-org")
        second = await ask(client, "alice", bill_to="solo-org")
        assert (first["spending_limit_remaining_nano_usd"], second["spending_limit_remaining_nano_usd"]) == (
            150_000,
            50_000,
        )
        assert (first["credits_remaining_nano_usd"], second["credits_remaining_nano_usd"]) == (0, 0)
        assert await ask(client, "alice", bill_to="solo-org") == refused(
            "spending_limit_reached", "solo-org", credits=0, limit=50_000
        )
        assert (await period_row(db, "solo-org")).held_nano_usd == 2 * ESTIMATE

    async def test_limit_counts_only_what_credits_cannot_cover(self, client: httpx.AsyncClient, db: Database) -> None:
        await set_limit(db, "alice", 0)
        # Credits cover it: a zero limit refuses nothing yet.
        assert (await ask(client, "alice"))["spending_limit_remaining_nano_usd"] == 0
        await set_period(db, "alice", credits_used_nano_usd=PRO_CREDITS - 2 * ESTIMATE - 50_000)
        covered = await ask(client, "alice")
        assert (covered["allowed"], covered["credits_remaining_nano_usd"]) == (True, 50_000)
        # 50,000 of the next estimate would be pay-as-you-go, over the zero limit.
        assert await ask(client, "alice") == refused("spending_limit_reached", "alice", credits=50_000, limit=0)

    async def test_delinquent(self, client: httpx.AsyncClient, db: Database) -> None:
        await set_status(db, "acme", "delinquent")
        assert await ask(client, "bob", bill_to="acme") == refused("account_delinquent", "acme")


class TestCustomKey:
    async def test_never_refused_for_money(self, client: httpx.AsyncClient, db: Database) -> None:
        await set_period(db, "bob", credits_used_nano_usd=FREE_CREDITS)
        await set_status(db, "bob", "delinquent")
        body = await ask(client, "bob", provider="paid-only together", custom_key=True)
        assert body == {
            "allowed": True,
            "billing_account": "bob",
            "providers": ["paid-only", "together"],
            "reason": None,
            "hold_id": None,
            "credits_remaining_nano_usd": None,
            "spending_limit_remaining_nano_usd": None,
        }
        assert await holds(db) == []

    async def test_membership_and_disabled_still_apply(self, client: httpx.AsyncClient, db: Database) -> None:
        await disable(db, "acme", ["together"])
        assert await ask(client, "carol", bill_to="acme", custom_key=True) == refused("not_a_member", None)
        assert await ask(client, "bob", bill_to="acme", custom_key=True) == refused("provider_disabled", "acme")


class TestValidation:
    @pytest.mark.parametrize(
        "body",
        [
            {"user": "alice", "provider": "together", "model": "m", "price": 1},
            {"user": "alice", "provider": "together", "model": "m", "custom_key": "yes"},
            {"user": "alice", "provider": "together", "model": "m", "custom_key": 1},
            {"user": 7, "provider": "together", "model": "m"},
            {"user": "alice", "provider": "   ", "model": "m"},
            {"user": "alice", "provider": "together"},
            {"user": "bad name!", "provider": "together", "model": "m"},
        ],
    )
    async def test_malformed_is_422(self, client: httpx.AsyncClient, db: Database, body: dict) -> None:
        response = await client.post(URL, json=body)
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"
        assert await holds(db) == []

    async def test_needs_service_token(self, anonymous_client: httpx.AsyncClient) -> None:
        response = await anonymous_client.post(URL, json={"user": "alice", "provider": "together", "model": "m"})
        assert response.status_code == 401
