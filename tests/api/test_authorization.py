"""Who may call the user-facing routes (SPEC §8): JWT checks, then object-level rules on every route.

Refusals are 404 for a caller who may not know the account exists (a non-member asking
about an org, a user asking about another user) and 403 for one who does (a member
without the admin role, a free user setting a limit).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from api.app import create_app
from metering.db import Database
from metering.models import Account, DisabledProvider
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.factories.billing_data import as_user, bearer, insert_usage, make_token, seed_world

ALICE, BOB, CAROL, DAVE, ERIN = (as_user(n) for n in ("alice", "bob", "carol", "dave", "erin"))
FINANCE, PLATFORM_ADMIN = as_user("fin", "finance"), as_user("root", "platform_admin")

READ_ROUTES = [
    "/v1/accounts/{name}/billing",
    "/v1/accounts/{name}/usage",
    "/v1/accounts/{name}/requests",
    "/v1/accounts/{name}/invoices",
    "/v1/accounts/{name}/audit",
]
FINANCE_READABLE = {"/v1/accounts/{name}/billing", "/v1/accounts/{name}/invoices"}


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)
    await insert_usage(
        db,
        [
            {
                "request_id": "acme-1",
                "user": "alice",
                "billing_account": "acme",
                "started_at": datetime(2026, 10, 5, tzinfo=UTC),
            },
            {
                "request_id": "globex-1",
                "user": "dave",
                "billing_account": "globex",
                "started_at": datetime(2026, 10, 5, tzinfo=UTC),
            },
        ],
    )


async def _state(db: Database) -> tuple:
    async with db.session_scope() as session:
        limits = {a.name: a.spending_limit_nano_usd for a in await session.scalars(select(Account))}
        disabled = sorted((d.account_name, d.provider_id) for d in await session.scalars(select(DisabledProvider)))
    return limits, disabled


class TestTokens:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic YWxpY2U6cHc="},
            bearer("not-a-jwt"),
            bearer(make_token("erin", expires_in=-3600)),
            bearer(make_token("erin", key="another-secret-that-is-long-enough-for-hs256")),
            bearer(make_token(None)),
            bearer(jwt.encode({"sub": "erin"}, TEST_JWT_SECRET, algorithm="HS256")),
            bearer(make_token("erin", key=TEST_JWT_SECRET * 2, algorithm="HS512")),
            bearer(make_token("")),
            bearer(
                jwt.encode({"sub": "erin", "exp": int(time.time()) + 600, "roles": "platform_admin"}, TEST_JWT_SECRET)
            ),
        ],
        ids=[
            "none",
            "empty",
            "basic",
            "garbage",
            "expired",
            "wrong-key",
            "no-sub",
            "no-exp",
            "hs512",
            "empty-sub",
            "roles-str",
        ],
    )
    async def test_refused_with_401(self, client: httpx.AsyncClient, world: None, headers: dict) -> None:
        response = await client.get("/v1/accounts/erin/billing", headers={"Authorization": "", **headers})
        assert response.status_code == 401
        assert response.json()["error"] == "Unauthenticated"

    async def test_alg_none_is_refused(self, client: httpx.AsyncClient, world: None) -> None:
        unsigned = jwt.encode(
            {"sub": "root", "exp": int(time.time()) + 600, "roles": ["platform_admin"]}, None, algorithm="none"
        )
        response = await client.get("/v1/accounts/acme/billing", headers=bearer(unsigned))
        assert response.status_code == 401

    async def test_unknown_roles_grant_nothing(self, client: httpx.AsyncClient, world: None) -> None:
        response = await client.get("/v1/accounts/acme/billing", headers=as_user("erin", "superuser"))
        assert response.status_code == 404


@pytest.fixture
def rsa_keys() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode(), public.decode()


@pytest.fixture
async def rs256_client(
    database_url: str, tmp_path: Path, db: Database, rsa_keys: tuple[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The app configured with only an RS256 public key."""
    settings = make_settings(database_url, tmp_path, jwt_public_key=rsa_keys[1])
    settings.jwt_secret = ""
    app = create_app(settings, database=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as http:
        yield http


def _hs256_signed_with(secret: str, claims: dict) -> str:
    """An HS256 token over ``claims`` keyed with any bytes (pyjwt refuses PEM keys for HMAC itself)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


class TestRS256:
    async def test_accepts_tokens_signed_with_the_private_key(
        self, rs256_client: httpx.AsyncClient, world: None, rsa_keys: tuple[str, str]
    ) -> None:
        token = make_token("erin", key=rsa_keys[0], algorithm="RS256")
        response = await rs256_client.get("/v1/accounts/erin/billing", headers=bearer(token))
        assert response.status_code == 200
        assert response.json()["account"] == "erin"

    async def test_refuses_hs256_including_one_keyed_with_the_public_key(
        self, rs256_client: httpx.AsyncClient, world: None, rsa_keys: tuple[str, str]
    ) -> None:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        forged = [
            make_token("erin"),
            make_token("erin", key=other.decode(), algorithm="RS256"),
            # Algorithm confusion: HMAC "signed" with the public key as the secret.
            _hs256_signed_with(rsa_keys[1], {"sub": "erin", "exp": int(time.time()) + 600}),
        ]
        for token in forged:
            response = await rs256_client.get("/v1/accounts/erin/billing", headers=bearer(token))
            assert response.status_code == 401, token


class TestReadRules:
    @pytest.mark.parametrize("route", READ_ROUTES)
    async def test_owner_admin_and_platform_admin_read(
        self, client: httpx.AsyncClient, world: None, route: str
    ) -> None:
        assert (await client.get(route.format(name="acme"), headers=ALICE)).status_code == 200
        assert (await client.get(route.format(name="erin"), headers=ERIN)).status_code == 200
        assert (await client.get(route.format(name="acme"), headers=PLATFORM_ADMIN)).status_code == 200

    @pytest.mark.parametrize("route", READ_ROUTES)
    async def test_members_without_admin_get_403(self, client: httpx.AsyncClient, world: None, route: str) -> None:
        for member in (BOB, CAROL):
            response = await client.get(route.format(name="acme"), headers=member)
            assert response.status_code == 403

    @pytest.mark.parametrize("route", READ_ROUTES)
    async def test_outsiders_get_the_same_404_as_for_a_missing_account(
        self, client: httpx.AsyncClient, world: None, route: str
    ) -> None:
        other_org = await client.get(route.format(name="acme"), headers=DAVE)
        other_user = await client.get(route.format(name="alice"), headers=ERIN)
        missing = await client.get(route.format(name="nobody"), headers=DAVE)
        assert other_org.status_code == other_user.status_code == missing.status_code == 404
        assert other_org.json() == {"error": "AccountNotFound", "detail": "no account named 'acme'"}
        assert missing.json() == {"error": "AccountNotFound", "detail": "no account named 'nobody'"}

    @pytest.mark.parametrize("route", READ_ROUTES)
    async def test_finance_reads_billing_and_invoices_only(
        self, client: httpx.AsyncClient, world: None, route: str
    ) -> None:
        response = await client.get(route.format(name="acme"), headers=FINANCE)
        assert response.status_code == (200 if route in FINANCE_READABLE else 403)

    @pytest.mark.parametrize(
        ("route", "query"),
        [
            ("/v1/accounts/globex/billing", {"account": "acme", "name": "acme"}),
            ("/v1/accounts/globex/requests", {"account": "acme", "user": "alice", "billing_account": "acme"}),
            ("/v1/accounts/globex/usage", {"account": "acme", "group_by": "member", "from": "2026-10-01"}),
            ("/v1/accounts/globex/audit", {"account": "acme"}),
            ("/v1/accounts/globex/invoices", {"account": "acme"}),
        ],
    )
    async def test_another_account_named_in_the_query_is_never_read(
        self, client: httpx.AsyncClient, world: None, route: str, query: dict
    ) -> None:
        response = await client.get(route, params=query, headers=DAVE)
        assert response.status_code == 200
        assert "acme" not in response.text and "alice" not in response.text

    async def test_a_cursor_cannot_cross_accounts(self, client: httpx.AsyncClient, db: Database, world: None) -> None:
        await insert_usage(
            db,
            [
                {
                    "request_id": f"a{i}",
                    "user": "alice",
                    "billing_account": "acme",
                    "started_at": datetime(2026, 10, 6, i, tzinfo=UTC),
                }
                for i in range(3)
            ],
        )
        acme_page = (await client.get("/v1/accounts/acme/requests?limit=1", headers=ALICE)).json()
        response = await client.get(f"/v1/accounts/globex/requests?cursor={acme_page['next_cursor']}", headers=DAVE)
        assert [item["request_id"] for item in response.json()["items"]] == ["globex-1"]


class TestWriteRules:
    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/v1/accounts/acme/billing/spending-limit", {"limit_nano_usd": 1}),
            ("/v1/orgs/acme/billing/disabled-providers", {"providers": ["together"]}),
        ],
    )
    async def test_only_the_org_admin_changes_settings(
        self, client: httpx.AsyncClient, db: Database, world: None, path: str, body: dict
    ) -> None:
        before = await _state(db)
        for caller, status in (
            (BOB, 403),
            (CAROL, 403),
            (FINANCE, 403),
            (PLATFORM_ADMIN, 403),
            (DAVE, 404),
            (ERIN, 404),
        ):
            response = await client.put(path, json=body, headers=caller)
            assert response.status_code == status, (caller, response.text)
        assert await _state(db) == before
        assert (await client.put(path, json=body, headers=ALICE)).status_code == 200

    async def test_a_user_may_not_set_another_users_limit(
        self, client: httpx.AsyncClient, db: Database, world: None
    ) -> None:
        before = await _state(db)
        response = await client.put(
            "/v1/accounts/alice/billing/spending-limit", json={"limit_nano_usd": 1}, headers=ERIN
        )
        assert response.status_code == 404
        assert await _state(db) == before

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/v1/accounts/globex/billing/spending-limit", {"limit_nano_usd": 1, "account": "acme"}),
            ("/v1/accounts/globex/billing/spending-limit", {"limit_nano_usd": 1, "balance_nano_usd": 10**12}),
            ("/v1/orgs/globex/billing/disabled-providers", {"providers": ["together"], "org": "acme"}),
            ("/v1/orgs/globex/billing/disabled-providers", {"providers": ["together"], "account_name": "acme"}),
        ],
    )
    async def test_unknown_body_fields_are_422_and_never_applied(
        self, client: httpx.AsyncClient, db: Database, world: None, path: str, body: dict
    ) -> None:
        before = await _state(db)
        response = await client.put(path, json=body, headers=DAVE)
        assert response.status_code == 422
        assert await _state(db) == before

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/v1/accounts/acme/billing/spending-limit", {"limit_nano_usd": 1}),
            ("/v1/orgs/acme/billing/disabled-providers", {"providers": ["together"]}),
        ],
    )
    async def test_admin_of_one_org_cannot_change_another_by_path(
        self, client: httpx.AsyncClient, db: Database, world: None, path: str, body: dict
    ) -> None:
        before = await _state(db)
        response = await client.put(path, json=body, headers=DAVE)
        assert response.status_code == 404
        assert await _state(db) == before


class TestExportRules:
    async def test_finance_and_platform_admin_only(self, client: httpx.AsyncClient, world: None) -> None:
        route = "/v1/finance/exports/receivables?period=2026-10&format=jsonl"
        assert (await client.get(route, headers=FINANCE)).status_code == 200
        assert (await client.get(route, headers=PLATFORM_ADMIN)).status_code == 200
        for caller in (ALICE, DAVE, ERIN):
            assert (await client.get(route, headers=caller)).status_code == 403
        assert (await client.get(route, headers={"Authorization": ""})).status_code == 401
