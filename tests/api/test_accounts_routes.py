"""Contract of the internal account and membership sync routes (SPEC §5.3)."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from metering.db import Database
from metering.models import Account, Membership


class TestPutAccount:
    async def test_creates_then_updates_an_org(self, client: httpx.AsyncClient, db: Database) -> None:
        created = await client.put("/internal/v1/accounts/acme", json={"kind": "org", "plan": "team", "seats": 3})
        assert created.status_code == 200
        assert created.json() == {"name": "acme", "kind": "org", "plan": "team", "seats": 3, "status": "active"}
        updated = await client.put("/internal/v1/accounts/acme", json={"kind": "org", "plan": "enterprise", "seats": 7})
        assert updated.json()["plan"] == "enterprise"
        async with db.session_scope() as session:
            account = await session.get(Account, "acme")
            assert (account.plan, account.seats) == ("enterprise", 7)

    async def test_unknown_plan_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.put("/internal/v1/accounts/bob", json={"kind": "user", "plan": "platinum"})
        assert response.status_code == 422
        assert response.json()["error"] == "UnknownPlan"

    async def test_user_plan_on_org_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.put("/internal/v1/accounts/acme", json={"kind": "org", "plan": "pro"})
        assert response.status_code == 422
        assert response.json()["error"] == "PlanKindMismatch"

    async def test_kind_cannot_change(self, client: httpx.AsyncClient) -> None:
        await client.put("/internal/v1/accounts/carol", json={"kind": "user", "plan": "pro"})
        response = await client.put("/internal/v1/accounts/carol", json={"kind": "org", "plan": "team"})
        assert response.status_code == 409

    async def test_unknown_field_is_refused(self, client: httpx.AsyncClient) -> None:
        response = await client.put(
            "/internal/v1/accounts/dave", json={"kind": "user", "plan": "pro", "balance_nano_usd": 10**12}
        )
        assert response.status_code == 422
        assert "balance_nano_usd" in response.json()["detail"]

    async def test_needs_service_token(self, anonymous_client: httpx.AsyncClient) -> None:
        response = await anonymous_client.put("/internal/v1/accounts/eve", json={"kind": "user", "plan": "pro"})
        assert response.status_code == 401
        wrong = await anonymous_client.put(
            "/internal/v1/accounts/eve", json={"kind": "user", "plan": "pro"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401


class TestMembers:
    async def test_put_creates_unknown_user_on_free_plan(self, client: httpx.AsyncClient, db: Database) -> None:
        await client.put("/internal/v1/accounts/acme", json={"kind": "org", "plan": "team", "seats": 2})
        response = await client.put("/internal/v1/orgs/acme/members/newbie", json={"role": "write"})
        assert response.status_code == 200
        assert response.json() == {"org": "acme", "user": "newbie", "role": "write"}
        async with db.session_scope() as session:
            assert (await session.get(Account, "newbie")).plan == "free"

    async def test_role_change_and_delete(self, client: httpx.AsyncClient, db: Database) -> None:
        await client.put("/internal/v1/accounts/acme", json={"kind": "org", "plan": "team", "seats": 2})
        await client.put("/internal/v1/orgs/acme/members/alice", json={"role": "read"})
        await client.put("/internal/v1/orgs/acme/members/alice", json={"role": "admin"})
        async with db.session_scope() as session:
            rows = (await session.scalars(select(Membership))).all()
            assert [(m.org_name, m.user_name, m.role) for m in rows] == [("acme", "alice", "admin")]
        assert (await client.delete("/internal/v1/orgs/acme/members/alice")).status_code == 204
        assert (await client.delete("/internal/v1/orgs/acme/members/alice")).status_code == 404

    async def test_org_must_exist_and_be_an_org(self, client: httpx.AsyncClient) -> None:
        assert (await client.put("/internal/v1/orgs/ghost/members/alice", json={"role": "read"})).status_code == 404
        await client.put("/internal/v1/accounts/solo", json={"kind": "user", "plan": "pro"})
        assert (await client.put("/internal/v1/orgs/solo/members/alice", json={"role": "read"})).status_code == 404

    async def test_bad_role_is_422(self, client: httpx.AsyncClient) -> None:
        await client.put("/internal/v1/accounts/acme", json={"kind": "org", "plan": "team"})
        assert (await client.put("/internal/v1/orgs/acme/members/alice", json={"role": "owner"})).status_code == 422
