"""Every range a caller controls is bounded (SPEC §8): dates 1970-01-01 to 9998-12-31, a capped
number of series points, ``from`` not after ``to``, months 01-12; out of range is a 422 in words."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from metering.db import Database
from tests.factories.billing_data import as_user, insert_usage, seed_world

ERIN, FINANCE = as_user("erin"), as_user("fin", "finance")
USAGE = "/v1/accounts/erin/usage"
# A refusal is answered before any query: far under this, on either database.
PROMPT_SECONDS = 2.0


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)


async def get_promptly(client: httpx.AsyncClient, url: str, **options: object) -> tuple[httpx.Response, float]:
    """The answer and how long it took; a hang fails the test after 30 s rather than stalling it."""
    started = time.monotonic()
    async with asyncio.timeout(30):
        response = await client.get(url, **options)
    return response, time.monotonic() - started


def refusal(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["detail"]


class TestUsageRange:
    async def test_year_one_is_refused_at_once(self, client: httpx.AsyncClient, world: None) -> None:
        """asyncpg sends 0001-01-01 00:00 as -infinity: the hourly series from it never ended on PostgreSQL."""
        response, seconds = await get_promptly(
            client,
            USAGE,
            params={"from": "0001-01-01T00:00:00Z", "to": "0001-01-01T05:00:00Z", "interval": "hour"},
            headers=ERIN,
        )

        assert refusal(response) == (
            422,
            "InvalidTimeRange",
            "from must be between 1970-01-01 and 9998-12-31, got 0001-01-01T00:00:00Z",
        )
        assert seconds < PROMPT_SECONDS

    async def test_the_last_day_of_9999_is_refused_not_an_overflow(
        self, client: httpx.AsyncClient, world: None
    ) -> None:
        response, seconds = await get_promptly(client, USAGE, params={"to": "9999-12-31"}, headers=ERIN)

        assert refusal(response) == (
            422,
            "InvalidTimeRange",
            "to must be between 1970-01-01 and 9998-12-31, got 9999-12-31",
        )
        assert seconds < PROMPT_SECONDS

    @pytest.mark.parametrize(
        ("params", "detail"),
        [
            ({"from": "1969-12-31"}, "from must be between 1970-01-01 and 9998-12-31, got 1969-12-31"),
            (
                {"from": "1970-01-01T00:59:59+01:00", "to": "1970-01-02"},
                "from must be between 1970-01-01 and 9998-12-31, got 1970-01-01T00:59:59+01:00",
            ),
            (
                {"from": "9998-12-31", "to": "9998-12-31T23:00:00-05:00"},
                "to must be between 1970-01-01 and 9998-12-31, got 9998-12-31T23:00:00-05:00",
            ),
            (
                {"from": "9998-12-31", "to": "9999-12-31T23:59:59.999999Z"},
                "to must be between 1970-01-01 and 9998-12-31, got 9999-12-31T23:59:59.999999Z",
            ),
            (
                {"from": "0001-01-01T00:00:00+01:00", "to": "9999-12-31T23:00:00-05:00"},
                "from must be between 1970-01-01 and 9998-12-31, got 0001-01-01T00:00:00+01:00",
            ),
            (
                {"from": "0000-01-01"},
                "from must be a date (YYYY-MM-DD) or an RFC 3339 timestamp with a zone, got '0000-01-01'",
            ),
        ],
    )
    async def test_dates_outside_1970_to_9998_are_422(
        self, client: httpx.AsyncClient, world: None, params: dict, detail: str
    ) -> None:
        response, seconds = await get_promptly(client, USAGE, params=params, headers=ERIN)

        assert refusal(response) == (422, "InvalidTimeRange", detail)
        assert seconds < PROMPT_SECONDS

    @pytest.mark.parametrize(
        ("params", "detail"),
        [
            (
                {"from": "2026-01-01", "to": "2027-12-31", "interval": "hour"},
                "the range 2026-01-01..2027-12-31 at interval=hour has 17,520 points; at most 9,600",
            ),
            (
                {"from": "1970-01-01", "to": "9998-12-31", "interval": "day"},
                "the range 1970-01-01..9998-12-31 at interval=day has 2,932,532 points; at most 9,600",
            ),
            (
                {"from": "2026-01-01T00:00:00Z", "to": "2027-02-05T00:00:00Z", "interval": "hour"},
                "the range 2026-01-01T00:00:00Z..2027-02-05T00:00:00Z at interval=hour has 9,601 points; at most 9,600",
            ),
        ],
    )
    async def test_more_points_than_the_cap_are_422(
        self, client: httpx.AsyncClient, world: None, params: dict, detail: str
    ) -> None:
        response, _ = await get_promptly(client, USAGE, params=params, headers=ERIN)

        assert refusal(response) == (422, "InvalidTimeRange", detail)

    async def test_the_cap_is_the_setting(self, client: httpx.AsyncClient, world: None, settings) -> None:
        settings.usage_max_series_points = 24
        within = await client.get(
            USAGE, params={"from": "2026-10-05", "to": "2026-10-05", "interval": "hour"}, headers=ERIN
        )
        over = await client.get(
            USAGE, params={"from": "2026-10-05", "to": "2026-10-06", "interval": "hour"}, headers=ERIN
        )

        assert (within.status_code, len(within.json()["buckets"])) == (200, 24)
        assert refusal(over) == (
            422,
            "InvalidTimeRange",
            "the range 2026-10-05..2026-10-06 at interval=hour has 48 points; at most 24",
        )

    @pytest.mark.parametrize(
        ("params", "detail"),
        [
            (
                {"from": "2026-10-05", "to": "2026-10-01"},
                "from must not be after to, got from=2026-10-05 and to=2026-10-01",
            ),
            (
                {"from": "2026-10-05T10:00:00.000002Z", "to": "2026-10-05T10:00:00.000001Z"},
                "from must not be after to, got from=2026-10-05T10:00:00.000002Z and to=2026-10-05T10:00:00.000001Z",
            ),
            ({"from": "9998-12-31"}, "from must not be after to, got from=9998-12-31 and to="),
        ],
    )
    async def test_from_after_to_is_422(
        self, client: httpx.AsyncClient, world: None, params: dict, detail: str
    ) -> None:
        response, _ = await get_promptly(client, USAGE, params=params, headers=ERIN)

        status, error, message = refusal(response)
        assert (status, error) == (422, "InvalidTimeRange")
        assert message.startswith(detail)

    @pytest.mark.parametrize(
        ("params", "buckets"),
        [
            ({"from": "1970-01-01", "to": "1970-01-01", "interval": "hour"}, 24),
            ({"from": "9998-12-31", "to": "9998-12-31", "interval": "hour"}, 24),
            ({"from": "9998-12-31T23:59:59.999999Z", "to": "9998-12-31T23:59:59.999999Z", "interval": "hour"}, 1),
            ({"from": "2026-10-05T10:00:00Z", "to": "2026-10-05T10:00:00Z", "interval": "hour"}, 1),
            ({"from": "2000-01-01", "to": "2026-04-13", "interval": "day"}, 9_600),
        ],
    )
    async def test_the_first_and_last_days_and_the_cap_itself_are_answered(
        self, client: httpx.AsyncClient, world: None, params: dict, buckets: int
    ) -> None:
        response, _ = await get_promptly(client, USAGE, params=params, headers=ERIN)

        assert response.status_code == 200, response.text
        assert len(response.json()["buckets"]) == buckets


class TestPeriod:
    @pytest.mark.parametrize(
        ("period", "message"),
        [
            ("2026-13", "period must be YYYY-MM (a month 01–12), got '2026-13'"),
            ("2026-00", "period must be YYYY-MM (a month 01–12), got '2026-00'"),
            ("2026-1", "period must be YYYY-MM (a month 01–12), got '2026-1'"),
            ("２０２６-１１", "period must be YYYY-MM (a month 01–12), got '２０２６-１１'"),
            ("", "period must be YYYY-MM (a month 01–12), got ''"),
            ("1969-12", "period must be between 1970-01 and 9998-12, got '1969-12'"),
            ("9999-01", "period must be between 1970-01 and 9998-12, got '9999-01'"),
        ],
    )
    @pytest.mark.parametrize(
        ("url", "headers"),
        [
            ("/v1/accounts/erin/billing", ERIN),
            ("/v1/accounts/erin/requests", ERIN),
            ("/v1/finance/exports/ledger", FINANCE),
        ],
    )
    async def test_a_bad_period_is_422_in_words(
        self, client: httpx.AsyncClient, world: None, url: str, headers: dict, period: str, message: str
    ) -> None:
        response = await client.get(url, params={"period": period}, headers=headers)

        assert response.status_code == 422
        assert response.json() == {
            "error": "ValidationError",
            "detail": f"query.period: {message}",
            "errors": [{"loc": ["query", "period"], "msg": message, "type": "period"}],
        }

    @pytest.mark.parametrize("period", ["1970-01", "9998-12"])
    async def test_the_first_and_last_periods_are_answered(
        self, client: httpx.AsyncClient, world: None, period: str
    ) -> None:
        billing = await client.get("/v1/accounts/erin/billing", params={"period": period}, headers=ERIN)
        requests = await client.get("/v1/accounts/erin/requests", params={"period": period}, headers=ERIN)
        export = await client.get("/v1/finance/exports/ledger", params={"period": period}, headers=FINANCE)

        assert (billing.status_code, billing.json()["period"]) == (200, period)
        assert (requests.status_code, requests.json()["items"]) == (200, [])
        assert export.status_code == 200

    async def test_the_billing_page_says_the_same(self, anonymous_client: httpx.AsyncClient, world: None) -> None:
        response = await anonymous_client.get("/billing/erin?period=2026-13", headers=ERIN)

        assert response.status_code == 422
        assert "period must be YYYY-MM (a month 01–12), got &#39;2026-13&#39;" in response.text


def forged_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


class TestCursor:
    """A cursor carries a timestamp and an id: out of range, they are a forged cursor, not a 500."""

    @pytest.mark.parametrize(
        "cursor",
        [
            forged_cursor("0001-01-01T00:00:00+01:00", 1),  # before year 1 in UTC
            forged_cursor("9999-12-31T23:00:00-05:00", 1),  # after 9999 in UTC
            forged_cursor("1969-12-31T23:59:59+00:00", 1),
            forged_cursor("2026-10-01T00:00:00", 1),  # no zone
            forged_cursor("2026-10-01T00:00:00+00:00", 2**63),  # beyond BIGINT
            forged_cursor("2026-10-01T00:00:00+00:00", -1),
            forged_cursor("2026-10-01T00:00:00+00:00", "1"),
            forged_cursor("2026-10-01T00:00:00+00:00", 1, 2),
            base64.urlsafe_b64encode(b'["2026-10-01T00:00:00+00:00", Infinity]').decode(),
        ],
    )
    async def test_request_log(self, client: httpx.AsyncClient, world: None, cursor: str) -> None:
        response = await client.get("/v1/accounts/erin/requests", params={"cursor": cursor}, headers=ERIN)

        assert refusal(response) == (422, "InvalidCursor", "cursor is not one this service issued")

    @pytest.mark.parametrize(
        "cursor", [forged_cursor(2**63), forged_cursor(10**30), forged_cursor(-(2**70)), forged_cursor(True)]
    )
    async def test_audit_log(self, client: httpx.AsyncClient, world: None, cursor: str) -> None:
        response = await client.get("/v1/accounts/erin/audit", params={"cursor": cursor}, headers=ERIN)

        assert refusal(response) == (422, "InvalidCursor", "cursor is not one this service issued")

    async def test_an_issued_cursor_still_pages(self, client: httpx.AsyncClient, db: Database, world: None) -> None:
        await insert_usage(
            db,
            [
                {"request_id": f"r{i}", "user": "erin", "started_at": datetime(2026, 10, 5, i, tzinfo=UTC)}
                for i in range(3)
            ],
        )
        first = (await client.get("/v1/accounts/erin/requests", params={"limit": 2}, headers=ERIN)).json()
        second = await client.get(
            "/v1/accounts/erin/requests", params={"limit": 2, "cursor": first["next_cursor"]}, headers=ERIN
        )

        assert [item["request_id"] for item in first["items"]] == ["r2", "r1"]
        assert [item["request_id"] for item in second.json()["items"]] == ["r0"]
