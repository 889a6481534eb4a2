"""Contract of the user-facing billing routes (SPEC §8): summary, spending limit, disabled providers,
invoices, audit, usage series and the request log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from metering.db import Database
from metering.models import Account
from metering.periods import current_period, period_bounds, previous_period, utcnow
from tests.factories.billing_data import as_user, ingest, insert_usage, price, seed_world, usage

ALICE, BOB, ERIN, FRANK = as_user("alice"), as_user("bob"), as_user("erin"), as_user("frank")
TEAM_CREDITS_PER_SEAT = 2_000_000_000


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)


def _recent(minutes: int) -> datetime:
    """A moment in the current period (the period's start when it began less than an hour ago)."""
    start, _ = period_bounds(current_period())
    return max(utcnow() - timedelta(minutes=minutes), start)


@pytest.mark.parametrize("period", ["0000-01", "9999-12", "2026-13"])
@pytest.mark.parametrize("route", ["billing", "requests"])
async def test_a_period_out_of_range_is_422(client: httpx.AsyncClient, world: None, route: str, period: str) -> None:
    """Year 0 and the month after 9999-12 have no dates: a clear refusal, not a server error."""
    response = await client.get(f"/v1/accounts/acme/{route}?period={period}", headers=ALICE)
    assert (response.status_code, response.json()["error"]) == (422, "ValidationError")


class TestBillingSummary:
    async def test_credits_then_payg_after_priced_requests(
        self, client: httpx.AsyncClient, db: Database, world: None
    ) -> None:
        await ingest(
            client,
            [
                usage("r1", user="alice", bill_to="acme", started_at=_recent(50)),
                usage("r2", user="bob", bill_to="acme", started_at=_recent(40)),
                usage("r3", user="bob", bill_to="acme", started_at=_recent(30)),
                usage("r4", user="bob", bill_to="acme", started_at=_recent(20), custom_key=True),
            ],
        )
        await price(db, {"r1": 1_500_000_000, "r2": 3_000_000_000})

        response = await client.get("/v1/accounts/acme/billing", headers=ALICE)

        assert response.status_code == 200
        assert response.json() == {
            "account": "acme",
            "kind": "org",
            "plan": "team",
            "seats": 2,
            "period": current_period(),
            "status": "active",
            "credits_granted_nano_usd": 4_000_000_000,
            "credits_used_nano_usd": 4_000_000_000,
            "credits_remaining_nano_usd": 0,
            "payg_nano_usd": 500_000_000,
            "written_off_nano_usd": 0,
            "spending_limit_nano_usd": None,
            "disabled_providers": [],
            "pending_requests": 1,
            "pending_estimate_nano_usd": 100_000,
            "held_nano_usd": 0,
            "estimate_drift": [
                {
                    "provider": "together",
                    "model": "org/model",
                    "requests": 2,
                    "mean_error_nano_usd": 2_249_900_000,
                    "p95_abs_error_nano_usd": 2_999_900_000,
                },
            ],
            "prepaid_balance_nano_usd": 0,
            "credit_grants_remaining_nano_usd": 0,
            "adjustments_nano_usd": 0,
        }

    async def test_without_a_period_row_the_plan_grant_shows_for_current_period_only(
        self, client: httpx.AsyncClient, world: None
    ) -> None:
        current = (await client.get("/v1/accounts/frank/billing", headers=FRANK)).json()
        past = (
            await client.get(f"/v1/accounts/frank/billing?period={previous_period(current_period())}", headers=FRANK)
        ).json()

        assert (current["credits_granted_nano_usd"], current["credits_remaining_nano_usd"]) == (
            100_000_000,
            100_000_000,
        )
        assert (past["credits_granted_nano_usd"], past["credits_remaining_nano_usd"]) == (0, 0)
        assert past["period"] == previous_period(current_period())
        assert past["payg_nano_usd"] == past["held_nano_usd"] == past["pending_requests"] == 0

    async def test_pending_requests_count_only_the_period_and_routed_pending(
        self, client: httpx.AsyncClient, db: Database, world: None
    ) -> None:
        await insert_usage(
            db,
            [
                {"request_id": "a", "user": "erin", "started_at": datetime(2026, 9, 30, 23, 59, 59, tzinfo=UTC)},
                {"request_id": "b", "user": "erin", "started_at": datetime(2026, 10, 1, tzinfo=UTC)},
                {
                    "request_id": "c",
                    "user": "erin",
                    "started_at": datetime(2026, 10, 2, tzinfo=UTC),
                    "custom_key": True,
                },
                {
                    "request_id": "d",
                    "user": "erin",
                    "started_at": datetime(2026, 10, 3, tzinfo=UTC),
                    "status": "priced",
                    "cost": 7,
                },
            ],
        )
        body = (await client.get("/v1/accounts/erin/billing?period=2026-10", headers=ERIN)).json()
        assert body["pending_requests"] == 1

    async def test_bad_period_is_422(self, client: httpx.AsyncClient, world: None) -> None:
        assert (await client.get("/v1/accounts/erin/billing?period=2026-13", headers=ERIN)).status_code == 422


class TestSpendingLimit:
    async def test_org_admin_sets_and_removes_it_and_both_are_audited(
        self, client: httpx.AsyncClient, world: None
    ) -> None:
        put = await client.put(
            "/v1/accounts/acme/billing/spending-limit", json={"limit_nano_usd": 50_000_000_000}, headers=ALICE
        )
        assert put.status_code == 200
        assert put.json() == {"account": "acme", "spending_limit_nano_usd": 50_000_000_000}
        billing = (await client.get("/v1/accounts/acme/billing", headers=ALICE)).json()
        assert billing["spending_limit_nano_usd"] == 50_000_000_000

        cleared = await client.put(
            "/v1/accounts/acme/billing/spending-limit", json={"limit_nano_usd": None}, headers=ALICE
        )
        assert cleared.json() == {"account": "acme", "spending_limit_nano_usd": None}

        audit = (await client.get("/v1/accounts/acme/audit", headers=ALICE)).json()
        assert [(e["actor"], e["before"], e["after"]) for e in audit["items"]] == [
            ("alice", {"spending_limit_nano_usd": 50_000_000_000}, {"spending_limit_nano_usd": None}),
            ("alice", {"spending_limit_nano_usd": None}, {"spending_limit_nano_usd": 50_000_000_000}),
        ]
        assert audit["next_cursor"] is None
        assert all(e["created_at"].endswith("Z") for e in audit["items"])

    async def test_pro_user_sets_their_own(self, client: httpx.AsyncClient, db: Database, world: None) -> None:
        response = await client.put(
            "/v1/accounts/erin/billing/spending-limit", json={"limit_nano_usd": 0}, headers=ERIN
        )
        assert response.json() == {"account": "erin", "spending_limit_nano_usd": 0}
        async with db.session_scope() as session:
            assert (await session.get(Account, "erin")).spending_limit_nano_usd == 0

    async def test_free_user_has_no_payg_to_limit(self, client: httpx.AsyncClient, db: Database, world: None) -> None:
        response = await client.put(
            "/v1/accounts/frank/billing/spending-limit", json={"limit_nano_usd": 5}, headers=FRANK
        )
        assert response.status_code == 403
        async with db.session_scope() as session:
            assert (await session.get(Account, "frank")).spending_limit_nano_usd is None

    @pytest.mark.parametrize("value", [-1, 1.5, "100", True, 2**63])
    async def test_only_non_negative_integers(self, client: httpx.AsyncClient, world: None, value: object) -> None:
        response = await client.put(
            "/v1/accounts/acme/billing/spending-limit", json={"limit_nano_usd": value}, headers=ALICE
        )
        assert response.status_code == 422

    async def test_the_field_is_required(self, client: httpx.AsyncClient, world: None) -> None:
        assert (await client.put("/v1/accounts/acme/billing/spending-limit", json={}, headers=ALICE)).status_code == 422


class TestDisabledProviders:
    async def test_org_admin_replaces_the_set(self, client: httpx.AsyncClient, world: None) -> None:
        first = await client.put(
            "/v1/orgs/acme/billing/disabled-providers",
            json={"providers": ["together", "fireworks-ai", "together"]},
            headers=ALICE,
        )
        assert first.json() == {"account": "acme", "disabled_providers": ["fireworks-ai", "together"]}
        second = await client.put(
            "/v1/orgs/acme/billing/disabled-providers", json={"providers": ["fireworks-ai"]}, headers=ALICE
        )
        assert second.json() == {"account": "acme", "disabled_providers": ["fireworks-ai"]}
        billing = (await client.get("/v1/accounts/acme/billing", headers=ALICE)).json()
        assert billing["disabled_providers"] == ["fireworks-ai"]
        audit = (await client.get("/v1/accounts/acme/audit?limit=1", headers=ALICE)).json()
        assert audit["items"][0]["after"] == {"disabled_providers": ["fireworks-ai"]}
        older = (
            await client.get(f"/v1/accounts/acme/audit?limit=1&cursor={audit['next_cursor']}", headers=ALICE)
        ).json()
        assert older["items"][0]["after"] == {"disabled_providers": ["fireworks-ai", "together"]}
        assert older["next_cursor"] is None

    async def test_unknown_provider_is_422_and_nothing_changes(self, client: httpx.AsyncClient, world: None) -> None:
        await client.put("/v1/orgs/acme/billing/disabled-providers", json={"providers": ["together"]}, headers=ALICE)
        response = await client.put(
            "/v1/orgs/acme/billing/disabled-providers", json={"providers": ["together", "nosuch"]}, headers=ALICE
        )
        assert response.status_code == 422
        assert "nosuch" in response.json()["detail"]
        billing = (await client.get("/v1/accounts/acme/billing", headers=ALICE)).json()
        assert billing["disabled_providers"] == ["together"]

    async def test_a_user_account_is_not_an_org(self, client: httpx.AsyncClient, world: None) -> None:
        response = await client.put("/v1/orgs/erin/billing/disabled-providers", json={"providers": []}, headers=ERIN)
        assert response.status_code == 403


class TestInvoices:
    async def test_empty_before_any_period_is_invoiced(self, client: httpx.AsyncClient, world: None) -> None:
        response = await client.get("/v1/accounts/acme/invoices", headers=ALICE)
        assert (response.status_code, response.json()) == (200, {"items": []})


class TestUsageSeries:
    async def test_org_defaults_to_members_by_day(self, client: httpx.AsyncClient, db: Database, world: None) -> None:
        day1, day2 = datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 10, 6, tzinfo=UTC)
        await insert_usage(
            db,
            [
                {
                    "request_id": "1",
                    "user": "alice",
                    "billing_account": "acme",
                    "started_at": day1 + timedelta(hours=1),
                    "status": "priced",
                    "cost": 1_200_000,
                },
                {
                    "request_id": "2",
                    "user": "alice",
                    "billing_account": "acme",
                    "started_at": day1 + timedelta(hours=23, minutes=59),
                    "status": "priced",
                    "cost": 800_000,
                },
                {"request_id": "3", "user": "bob", "billing_account": "acme", "started_at": day2, "custom_key": True},
                {"request_id": "4", "user": "bob", "billing_account": "acme", "started_at": day2 + timedelta(hours=2)},
                {"request_id": "5", "user": "alice", "started_at": day2},  # billed to alice, not acme
            ],
        )
        response = await client.get("/v1/accounts/acme/usage?from=2026-10-05&to=2026-10-06", headers=ALICE)

        assert response.status_code == 200
        body = response.json()
        assert (body["from"], body["to"], body["interval"], body["group_by"]) == (
            "2026-10-05T00:00:00Z",
            "2026-10-07T00:00:00Z",
            "day",
            "member",
        )
        assert body["buckets"] == ["2026-10-05T00:00:00Z", "2026-10-06T00:00:00Z"]
        assert body["series"] == [
            {
                "key": "alice",
                "points": [
                    {
                        "start": "2026-10-05T00:00:00Z",
                        "requests": 2,
                        "priced_requests": 2,
                        "cost_nano_usd": 2_000_000,
                        "pending_requests": 0,
                        "custom_key_requests": 0,
                    },
                ],
                "totals": {
                    "requests": 2,
                    "priced_requests": 2,
                    "cost_nano_usd": 2_000_000,
                    "pending_requests": 0,
                    "custom_key_requests": 0,
                },
            },
            {
                "key": "bob",
                "points": [
                    {
                        "start": "2026-10-06T00:00:00Z",
                        "requests": 1,
                        "priced_requests": 0,
                        "cost_nano_usd": 0,
                        "pending_requests": 1,
                        "custom_key_requests": 1,
                    },
                ],
                "totals": {
                    "requests": 1,
                    "priced_requests": 0,
                    "cost_nano_usd": 0,
                    "pending_requests": 1,
                    "custom_key_requests": 1,
                },
            },
        ]
        assert body["totals"] == {
            "requests": 3,
            "priced_requests": 2,
            "cost_nano_usd": 2_000_000,
            "pending_requests": 1,
            "custom_key_requests": 1,
        }

    async def test_hourly_by_provider_with_timestamps(
        self, client: httpx.AsyncClient, db: Database, world: None
    ) -> None:
        base = datetime(2026, 10, 5, 10, tzinfo=UTC)
        await insert_usage(
            db,
            [
                {
                    "request_id": "1",
                    "user": "erin",
                    "started_at": base + timedelta(minutes=5),
                    "status": "priced",
                    "cost": 3,
                },
                {
                    "request_id": "2",
                    "user": "erin",
                    "started_at": base + timedelta(minutes=65),
                    "provider": "fireworks-ai",
                    "status": "priced",
                    "cost": 4,
                },
                {"request_id": "3", "user": "erin", "started_at": base + timedelta(minutes=125)},  # after 'to'
            ],
        )
        response = await client.get(
            "/v1/accounts/erin/usage",
            params={"from": "2026-10-05T10:00:00Z", "to": "2026-10-05T12:00:00+00:00", "interval": "hour"},
            headers=ERIN,
        )
        body = response.json()
        assert body["group_by"] == "provider"
        assert [(s["key"], [(p["start"], p["cost_nano_usd"]) for p in s["points"]]) for s in body["series"]] == [
            ("fireworks-ai", [("2026-10-05T11:00:00Z", 4)]),
            ("together", [("2026-10-05T10:00:00Z", 3)]),
        ]
        assert body["buckets"] == ["2026-10-05T10:00:00Z", "2026-10-05T11:00:00Z", "2026-10-05T12:00:00Z"]

    @pytest.mark.parametrize(
        "params",
        [
            {"from": "2026-10-05", "to": "2026-10-01"},
            {"from": "yesterday"},
            {"from": "2026-10-05T10:00:00"},  # no zone
            {"from": "2026-01-01", "to": "2027-12-31", "interval": "hour"},  # 17,520 hours: over 9,600
            {"interval": "week"},
            {"group_by": "color"},
        ],
    )
    async def test_bad_ranges_are_422(self, client: httpx.AsyncClient, world: None, params: dict) -> None:
        assert (await client.get("/v1/accounts/erin/usage", params=params, headers=ERIN)).status_code == 422


class TestRequestLog:
    async def test_pages_are_stable_while_requests_arrive(
        self, client: httpx.AsyncClient, db: Database, world: None
    ) -> None:
        base = datetime(2026, 10, 5, tzinfo=UTC)
        # Two requests share a start time: the id breaks the tie.
        starts = [base + timedelta(minutes=m) for m in (0, 1, 2, 2, 3, 4, 5)]
        await insert_usage(db, [{"request_id": f"r{i}", "user": "erin", "started_at": s} for i, s in enumerate(starts)])
        first = (await client.get("/v1/accounts/erin/requests?limit=3", headers=ERIN)).json()
        assert [item["request_id"] for item in first["items"]] == ["r6", "r5", "r4"]

        await insert_usage(
            db,
            [
                {"request_id": "newest", "user": "erin", "started_at": base + timedelta(hours=1)},
                {"request_id": "late", "user": "erin", "started_at": base + timedelta(seconds=30)},
            ],
        )
        second = (
            await client.get(f"/v1/accounts/erin/requests?limit=3&cursor={first['next_cursor']}", headers=ERIN)
        ).json()
        third = (
            await client.get(f"/v1/accounts/erin/requests?limit=3&cursor={second['next_cursor']}", headers=ERIN)
        ).json()

        assert [item["request_id"] for item in second["items"]] == ["r3", "r2", "r1"]
        assert [item["request_id"] for item in third["items"]] == ["late", "r0"]
        assert third["next_cursor"] is None

    async def test_items_carry_the_spec_fields(self, client: httpx.AsyncClient, db: Database, world: None) -> None:
        await insert_usage(
            db,
            [
                {
                    "request_id": "x",
                    "user": "bob",
                    "billing_account": "acme",
                    "started_at": datetime(2026, 10, 5, 8, tzinfo=UTC),
                    "status": "priced",
                    "cost": 1_200_000,
                    "model": "org/a",
                }
            ],
        )
        body = (await client.get("/v1/accounts/acme/requests?period=2026-10", headers=ALICE)).json()
        assert body == {
            "items": [
                {
                    "request_id": "x",
                    "provider": "together",
                    "model": "org/a",
                    "user": "bob",
                    "status": "priced",
                    "cost_nano_usd": 1_200_000,
                    "custom_key": False,
                    "started_at": "2026-10-05T08:00:00Z",
                }
            ],
            "next_cursor": None,
        }
        assert (await client.get("/v1/accounts/acme/requests?period=2026-11", headers=ALICE)).json()["items"] == []

    @pytest.mark.parametrize("cursor", ["garbage!", "WyJ4Il0", "e30"])
    async def test_a_forged_cursor_is_422(self, client: httpx.AsyncClient, world: None, cursor: str) -> None:
        response = await client.get(f"/v1/accounts/erin/requests?cursor={cursor}", headers=ERIN)
        assert response.status_code == 422
