"""Contract of ``POST /internal/v1/usage`` (SPEC §5.2) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from metering.db import Database
from metering.metrics import registry
from metering.models import Account, AccountPeriod, UsageRecord
from metering.periods import current_period, period_bounds
from metering.usage.service import CONFLICT
from tests.conftest import SERVICE_TOKEN
from tests.factories.accounts import add_member, create_account
from tests.factories.providers import create_provider
from tests.support.servers import metering_server

URL = "/internal/v1/usage"
STARTED_AT = "2026-11-20T10:15:30.250+02:00"


def record(request_id: str = "req-1", **overrides: object) -> dict:
    values = {
        "request_id": request_id,
        "provider": "together",
        "user": "alice",
        "bill_to": None,
        "model": "org/name",
        "task": "conversational",
        "custom_key": False,
        "started_at": STARTED_AT,
        "input_tokens": 1200,
        "output_tokens": 300,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not ...}


async def post(client: httpx.AsyncClient, *records: dict) -> dict:
    response = await client.post(URL, json={"records": list(records)})
    assert response.status_code == 200, response.text
    return response.json()


async def stored(db: Database, request_id: str = "req-1", provider: str = "together") -> UsageRecord | None:
    async with db.session_scope() as session:
        return await session.scalar(
            select(UsageRecord).where(UsageRecord.provider_id == provider, UsageRecord.request_id == request_id)
        )


async def count_rows(db: Database) -> int:
    async with db.session_scope() as session:
        return await session.scalar(select(func.count()).select_from(UsageRecord))


@pytest.fixture
async def provider(db: Database) -> str:
    async with db.session_scope() as session:
        await create_provider(session, "together", default_estimate_nano_usd=100_000)
    return "together"


@pytest.fixture
async def acme(db: Database, provider: str) -> str:
    """A team org with alice as a member; bob exists but is not a member."""
    async with db.session_scope() as session:
        await create_account(session, "acme", plan="team", seats=2)
        await create_account(session, "alice", plan="pro")
        await create_account(session, "bob", plan="pro")
        await add_member(session, org="acme", user="alice")
    return "acme"


class TestAccepted:
    async def test_stores_a_new_record_with_every_field(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        before = datetime.now(UTC)
        body = await post(client, record(duration_ms=2500, hardware="gpu-a10g", hold_id=None))
        assert body == {"accepted": 1, "duplicates": 0, "rejected": []}
        row = await stored(db)
        assert (row.provider_id, row.request_id, row.user_name, row.billing_account) == (
            "together",
            "req-1",
            "alice",
            "alice",
        )
        assert (row.bill_to, row.bill_to_flagged, row.bill_to_flag_reason) == (None, False, None)
        assert (row.model, row.task, row.custom_key, row.status) == ("org/name", "conversational", False, "pending")
        assert row.started_at == datetime(2026, 11, 20, 8, 15, 30, 250_000, tzinfo=UTC)
        assert row.period == "2026-11"
        assert (row.duration_ms, row.hardware, row.input_tokens, row.output_tokens) == (2500, "gpu-a10g", 1200, 300)
        assert len(row.content_hash) == 32
        assert row.attempts == 0
        assert row.next_attempt_at == row.received_at
        assert before <= row.received_at <= datetime.now(UTC)
        assert row.cost_nano_usd is None

    async def test_period_is_the_utc_month_of_started_at(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        this_month = current_period()
        last_day = (period_bounds(this_month)[0] - timedelta(days=1)).date().isoformat()
        await post(client, record(started_at=f"{last_day}T23:30:00-02:00"))
        row = await stored(db)
        assert (row.period, row.started_at) == (
            this_month,
            period_bounds(this_month)[0] + timedelta(hours=1, minutes=30),
        )

    async def test_custom_key_is_stored_with_its_own_status(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        assert (await post(client, record(custom_key=True)))["accepted"] == 1
        row = await stored(db)
        assert (row.status, row.custom_key, row.estimate_nano_usd, row.cost_nano_usd) == ("custom_key", True, 0, None)

    async def test_unknown_user_is_created_on_the_free_plan(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        await post(client, record(user="newcomer"))
        async with db.session_scope() as session:
            account = await session.get(Account, "newcomer")
            assert (account.kind, account.plan, account.seats, account.status) == ("user", "free", 1, "active")

    async def test_a_pending_record_adds_its_estimate_once(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        """The accepted row reaches accounting in the same transaction; a duplicate does not."""
        await post(client, record())
        await post(client, record())
        row = await stored(db)
        assert row.estimate_nano_usd == 100_000
        async with db.session_scope() as session:
            period = await session.get(AccountPeriod, ("alice", "2026-11"))
            assert period.pending_estimate_nano_usd == 100_000


class TestIdempotency:
    async def test_same_record_again_is_a_duplicate(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        assert await post(client, record()) == {"accepted": 1, "duplicates": 0, "rejected": []}
        assert await post(client, record()) == {"accepted": 0, "duplicates": 1, "rejected": []}
        assert await count_rows(db) == 1

    async def test_same_instant_in_another_zone_is_a_duplicate(self, client: httpx.AsyncClient, provider: str) -> None:
        await post(client, record(started_at="2026-11-20T08:15:30.25Z"))
        assert await post(client, record(started_at=STARTED_AT)) == {"accepted": 0, "duplicates": 1, "rejected": []}

    async def test_absent_optional_fields_equal_nulls(self, client: httpx.AsyncClient, provider: str) -> None:
        await post(client, record(task=..., bill_to=..., custom_key=...))
        body = await post(client, record(task=None, bill_to=None, custom_key=False))
        assert body == {"accepted": 0, "duplicates": 1, "rejected": []}

    async def test_different_content_is_a_conflict_and_the_row_is_unchanged(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        await post(client, record(output_tokens=300))
        original = await stored(db)
        body = await post(client, record(output_tokens=301, model="org/other"), record("req-2"))
        assert body == {
            "accepted": 1,
            "duplicates": 0,
            "rejected": [{"index": 0, "request_id": "req-1", "error": CONFLICT}],
        }
        after = await stored(db)
        assert (after.id, after.output_tokens, after.model, after.content_hash) == (
            original.id,
            300,
            "org/name",
            original.content_hash,
        )

    async def test_same_key_twice_in_one_batch(self, client: httpx.AsyncClient, db: Database, provider: str) -> None:
        body = await post(client, record(), record(), record(output_tokens=1), record("req-2"))
        assert body == {
            "accepted": 2,
            "duplicates": 1,
            "rejected": [{"index": 2, "request_id": "req-1", "error": CONFLICT}],
        }
        assert (await stored(db)).output_tokens == 300

    async def test_the_same_request_id_at_two_providers_is_two_records(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        async with db.session_scope() as session:
            await create_provider(session, "fireworks-ai")
        body = await post(client, record(), record(provider="fireworks-ai"))
        assert body == {"accepted": 2, "duplicates": 0, "rejected": []}

    async def test_fifty_concurrent_posts_store_one_row(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        responses = await asyncio.gather(*(client.post(URL, json={"records": [record()]}) for _ in range(50)))
        assert [r.status_code for r in responses] == [200] * 50
        bodies = [r.json() for r in responses]
        assert sum(b["accepted"] for b in bodies) == 1
        assert sum(b["duplicates"] for b in bodies) == 49
        assert all(b["rejected"] == [] for b in bodies)
        assert await count_rows(db) == 1

    async def test_concurrent_batches_of_the_same_users_all_commit_with_their_estimates(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        batches = [[record(f"b{n}-{i}", user=f"user-{i}") for i in range(40)] for n in range(6)]
        responses = await asyncio.gather(*(client.post(URL, json={"records": batch}) for batch in batches))
        assert [r.json() for r in responses] == [{"accepted": 40, "duplicates": 0, "rejected": []}] * 6
        async with db.session_scope() as session:
            pending = dict(
                (
                    await session.execute(select(AccountPeriod.account_name, AccountPeriod.pending_estimate_nano_usd))
                ).all()
            )
        assert pending == {f"user-{i}": 6 * 100_000 for i in range(40)}
        assert await count_rows(db) == 240


class TestBillTo:
    async def test_member_of_a_team_org_bills_the_org(self, client: httpx.AsyncClient, db: Database, acme: str) -> None:
        await post(client, record(bill_to="acme"))
        row = await stored(db)
        assert (row.user_name, row.bill_to, row.billing_account, row.bill_to_flagged, row.bill_to_flag_reason) == (
            "alice",
            "acme",
            "acme",
            False,
            None,
        )

    @pytest.mark.parametrize(
        ("user", "bill_to", "reason"),
        [
            ("alice", "nobody-knows", "unknown_account"),
            ("alice", "", "unknown_account"),
            ("bob", "acme", "not_a_member"),
            ("alice", "bob", "bill_to_not_eligible"),
        ],
    )
    async def test_invalid_bill_to_is_stored_against_the_user_and_flagged(
        self, client: httpx.AsyncClient, db: Database, acme: str, user: str, bill_to: str, reason: str
    ) -> None:
        assert await post(client, record(user=user, bill_to=bill_to)) == {
            "accepted": 1,
            "duplicates": 0,
            "rejected": [],
        }
        row = await stored(db)
        assert (row.user_name, row.bill_to, row.billing_account, row.bill_to_flagged, row.bill_to_flag_reason) == (
            user,
            bill_to,
            user,
            True,
            reason,
        )

    async def test_an_enterprise_org_that_became_ineligible_is_flagged(
        self, client: httpx.AsyncClient, db: Database, acme: str
    ) -> None:
        async with db.session_scope() as session:
            await create_account(session, "bigco", plan="enterprise")
            await add_member(session, org="bigco", user="alice")
        await post(client, record("req-ok", bill_to="bigco"), record("req-no", bill_to="bigco", user="bob"))
        assert (await stored(db, "req-ok")).billing_account == "bigco"
        assert ((row := await stored(db, "req-no")).billing_account, row.bill_to_flag_reason) == ("bob", "not_a_member")


class TestRejections:
    future = (datetime.now(UTC) + timedelta(hours=25)).isoformat()

    @pytest.mark.parametrize(
        ("overrides", "request_id", "error"),
        [
            ({"request_id": ""}, "", "request_id: must not be empty"),
            ({"request_id": "r" * 257}, "r" * 257, "request_id: must be at most 256 characters, got 257"),
            ({"request_id": "req\n1"}, "req\n1", "request_id: contains control or non-printable characters"),
            ({"request_id": "req\u200b1"}, "req\u200b1", "request_id: contains control or non-printable characters"),
            ({"request_id": 17}, None, "request_id: must be a string, got an integer"),
            ({"request_id": ...}, None, "missing required field(s): request_id"),
            ({"provider": "nope"}, "req-1", "provider: unknown provider 'nope'"),
            ({"user": ..., "model": ...}, "req-1", "missing required field(s): user, model"),
            ({"user": None}, "req-1", "missing required field(s): user"),
            ({"user": "alice smith"}, "req-1", "user: must be an account name"),
            ({"input_tokens": True}, "req-1", "input_tokens: must be an integer, got a boolean"),
            ({"input_tokens": 12.0}, "req-1", "input_tokens: must be an integer, got a number"),
            ({"output_tokens": "12"}, "req-1", "output_tokens: must be an integer, got a string"),
            ({"duration_ms": -1}, "req-1", "duration_ms: must be >= 0, got -1"),
            ({"input_tokens": -5}, "req-1", "input_tokens: must be >= 0, got -5"),
            ({"output_tokens": 2**63}, "req-1", "output_tokens: must be at most"),
            ({"custom_key": "false"}, "req-1", "custom_key: must be a boolean, got a string"),
            (
                {"started_at": "2026-11-20T10:15:30"},
                "req-1",
                "started_at: must be an RFC 3339 timestamp with a time zone",
            ),
            ({"started_at": "2026-11-20"}, "req-1", "started_at: must be an RFC 3339 timestamp with a time zone"),
            ({"started_at": "2026-02-30T10:00:00Z"}, "req-1", "started_at: '2026-02-30T10:00:00Z' is not a valid time"),
            ({"started_at": 1763633730}, "req-1", "started_at: must be an RFC 3339 string, got an integer"),
            ({"started_at": future}, "req-1", f"started_at: {future!r} is more than 24 h in the future"),
            ({"model": "m" * 257}, "req-1", "model: must be at most 256 characters, got 257"),
            ({"hold_id": "h" * 37}, "req-1", "hold_id: must be at most 36 characters, got 37"),
            ({"bill_to": "acme\x00"}, "req-1", "bill_to: contains control or non-printable characters"),
            ({"cost_nano_usd": 5}, "req-1", "unknown field(s): cost_nano_usd"),
        ],
    )
    async def test_a_bad_record_is_named_and_never_blocks_the_others(
        self,
        client: httpx.AsyncClient,
        db: Database,
        provider: str,
        overrides: dict,
        request_id: str | None,
        error: str,
    ) -> None:
        body = await post(client, record("good-1"), record(**overrides), record("good-2"))
        assert (body["accepted"], body["duplicates"]) == (2, 0)
        [rejection] = body["rejected"]
        assert (rejection["index"], rejection["request_id"]) == (1, request_id)
        assert rejection["error"].startswith(error), rejection["error"]
        assert await count_rows(db) == 2

    async def test_a_record_that_is_not_an_object(self, client: httpx.AsyncClient, provider: str) -> None:
        body = await post(client, "req-1", record("good"))
        assert body == {
            "accepted": 1,
            "duplicates": 0,
            "rejected": [{"index": 0, "request_id": None, "error": "record must be a JSON object, got a string"}],
        }

    async def test_a_user_that_is_an_org_is_rejected(self, client: httpx.AsyncClient, acme: str) -> None:
        body = await post(client, record(user="acme"))
        assert body["rejected"] == [
            {"index": 0, "request_id": "req-1", "error": "user: 'acme' is an organization, not a user"}
        ]

    async def test_an_escaped_lone_surrogate_rejects_only_its_record(
        self, client: httpx.AsyncClient, db: Database, provider: str
    ) -> None:
        raw = orjson.dumps({"records": [record("good"), record("BAD")]}).replace(b"BAD", b"\\ud800")
        response = await client.post(URL, content=raw, headers={"content-type": "application/json"})
        # A lone surrogate cannot be written back as JSON, so the rejection names no request_id.
        assert response.json() == {
            "accepted": 1,
            "duplicates": 0,
            "rejected": [
                {"index": 1, "request_id": None, "error": "request_id: contains control or non-printable characters"}
            ],
        }
        assert await count_rows(db) == 1


class TestWholeBody:
    async def test_without_a_token_is_401(self, anonymous_client: httpx.AsyncClient, provider: str) -> None:
        response = await anonymous_client.post(URL, json={"records": [record()]})
        assert response.status_code == 401
        assert response.json()["error"] == "Unauthenticated"

    @pytest.mark.parametrize(
        ("content", "detail"),
        [
            (b"{not json", "body is not valid JSON"),
            (b"[]", 'body must be a JSON object {"records": [...]}, got an array'),
            (b"{}", 'body: "records" is missing'),
            (b'{"records": {}}', 'body: "records" must be an array, got an object'),
            (b'{"records": []}', 'body: "records" must hold at least 1 record, got 0'),
            (b'{"records": [], "extra": 1}', "body: unknown field(s): extra"),
            (b'{"records": [NaN]}', "body is not valid JSON"),
        ],
    )
    async def test_a_malformed_body_is_422(self, client: httpx.AsyncClient, content: bytes, detail: str) -> None:
        response = await client.post(URL, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"
        assert response.json()["detail"].startswith(detail), response.json()["detail"]

    async def test_more_than_5000_records_is_422(self, client: httpx.AsyncClient, db: Database, provider: str) -> None:
        response = await client.post(URL, json={"records": [record(f"r{i}") for i in range(5001)]})
        assert response.status_code == 422
        assert response.json() == {
            "error": "ValidationError",
            "detail": 'body: "records" may hold at most 5000 records, got 5001',
        }
        assert await count_rows(db) == 0

    async def test_a_body_over_the_size_limit_is_413(self, client: httpx.AsyncClient, settings) -> None:
        padding = "x" * (settings.max_body_bytes + 1)
        response = await client.post(URL, json={"records": [record(model=padding)]})
        assert response.status_code == 413
        assert response.json()["error"] == "PayloadTooLarge"

    async def test_a_streamed_body_over_the_size_limit_is_413(self, client: httpx.AsyncClient, settings) -> None:
        async def chunks():
            for _ in range(settings.max_body_bytes // 65536 + 2):
                yield b" " * 65536

        response = await client.post(URL, content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413


class TestOpenApi:
    async def test_the_body_read_raw_is_still_documented(self, client: httpx.AsyncClient) -> None:
        operation = (await client.get("/openapi.json")).json()["paths"][URL]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert (body["required"], body["properties"]["records"]["maxItems"]) == (["records"], 5000)
        assert set(body["properties"]["records"]["items"]["required"]) == {
            "request_id",
            "provider",
            "user",
            "model",
            "started_at",
        }


class TestMetrics:
    async def test_outcomes_are_counted(self, client: httpx.AsyncClient, provider: str) -> None:
        def sample(outcome: str) -> float:
            return registry.get_sample_value("metering_usage_records_total", {"outcome": outcome}) or 0.0

        before = {outcome: sample(outcome) for outcome in ("accepted", "duplicate", "rejected")}
        await post(client, record("m1"), record("m2"))
        await post(client, record("m1"), record("m3", provider="nope"))
        assert {outcome: sample(outcome) - before[outcome] for outcome in before} == {
            "accepted": 2.0,
            "duplicate": 1.0,
            "rejected": 1.0,
        }


class TestRealServer:
    """The route behind uvicorn over loopback, as the hook reaches it."""

    def test_ingest_over_http(self, tmp_path: Path) -> None:
        env = {
            "METERING_DATA_DIR": str(tmp_path),
            "METERING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/metering.db",
            "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
            "METERING_MAX_BODY_BYTES": "65536",
        }
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        with metering_server(env) as base_url, httpx.Client(base_url=base_url, headers=headers) as http:
            registration = {
                "url": "https://api.example.com",
                "pricing": "cost_endpoint",
                "cost_endpoint": "https://api.example.com/costs",
                "cost_token": "t",
            }
            assert http.put("/internal/v1/providers/together", json=registration).status_code == 200
            batch = {"records": [record(f"req-{i}") for i in range(100)]}
            assert http.post(URL, json=batch).json() == {"accepted": 100, "duplicates": 0, "rejected": []}
            assert http.post(URL, json=batch).json() == {"accepted": 0, "duplicates": 100, "rejected": []}
            too_big = http.post(URL, json={"records": [record(model="m" * 70_000)]})
            assert (too_big.status_code, too_big.json()["error"]) == (413, "PayloadTooLarge")
            assert http.post(URL, content=b"{", headers={"content-type": "application/json"}).status_code == 422
