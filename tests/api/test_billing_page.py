"""``GET /billing/{account}``: every number on the page equals the JSON API's, with the API's access rules.

Values are read from the page's ``data-*`` attributes (tests/support/pages.py) and compared exactly.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from metering.db import Database
from metering.models import Account
from metering.money import format_usd
from metering.periods import current_period, period_bounds, previous_period
from tests.factories.accounts import add_member, create_account
from tests.factories.billing_data import as_user, bearer, insert_usage, make_token, seed_world
from tests.support.pages import (
    ORG_LIMIT_NANO_USD,
    amounts_without_value,
    chart_points,
    invoice_rows,
    member_totals,
    moment_in_period,
    page_fields,
    parse,
    seed_org_month,
)

ALICE = as_user("alice")
SHOWN_AS_IS = ("account", "kind", "plan", "seats", "period", "status", "pending_requests")


@pytest.fixture
async def org_month(client: httpx.AsyncClient, db: Database) -> None:
    await seed_org_month(client, db)


async def get_page(http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    response = await http.get(path, headers=headers or {})
    assert response.headers["content-type"].startswith("text/html"), response.text[:200]
    return response


class TestNumbersMatchTheApi:
    async def test_summary_of_the_current_period(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        api = (await client.get("/v1/accounts/acme/billing", headers=ALICE)).json()
        page = await get_page(anonymous_client, "/billing/acme", ALICE)

        fields = page_fields(parse(page.text))

        assert page.status_code == 200
        assert api["payg_nano_usd"] > 0 and api["credits_used_nano_usd"] == api["credits_granted_nano_usd"] > 0
        for name, value in api.items():
            if name.endswith("_nano_usd"):
                assert fields[name] == value, name
        assert {name: fields[name] for name in SHOWN_AS_IS} == {name: api[name] for name in SHOWN_AS_IS}
        assert fields["limit_spent_nano_usd"] == api["payg_nano_usd"]
        assert fields["disabled_providers"] == " ".join(api["disabled_providers"]) == "fireworks-ai"

    async def test_amounts_are_shown_exactly_in_usd_and_each_carries_its_value(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        api = (await client.get("/v1/accounts/acme/billing", headers=ALICE)).json()
        elements = parse((await get_page(anonymous_client, "/billing/acme", ALICE)).text)

        shown = {
            e.attrs["data-field"]: "".join(e.text)
            for e in elements
            if e.section == "summary" and "data-nano-usd" in e.attrs
        }

        assert shown["payg_nano_usd"] == format_usd(api["payg_nano_usd"]) == "$1.484567891"
        assert shown["credits_granted_nano_usd"] == shown["credits_used_nano_usd"] == "$4.000000000"
        assert amounts_without_value(elements) == []

    async def test_limit_gauge_is_charged_over_limit_in_per_mille(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        api = (await client.get("/v1/accounts/acme/billing", headers=ALICE)).json()
        page = await get_page(anonymous_client, "/billing/acme", ALICE)

        [gauge] = [e for e in parse(page.text) if e.attrs.get("role") == "progressbar"]

        assert int(gauge.attrs["data-permille"]) == api["payg_nano_usd"] * 1000 // ORG_LIMIT_NANO_USD

    async def test_chart_has_the_usage_routes_series(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        start, end = period_bounds(current_period())
        last_day = (end - timedelta(days=1)).date()
        query = {"from": start.date().isoformat(), "to": last_day.isoformat(), "group_by": "member"}
        api = (await client.get("/v1/accounts/acme/usage", params=query, headers=ALICE)).json()
        elements = parse((await get_page(anonymous_client, "/billing/acme", ALICE)).text)

        expected = {
            group["key"]: {
                point["start"][:10]: (point["cost_nano_usd"], point["requests"]) for point in group["points"]
            }
            for group in api["series"]
        }
        assert chart_points(elements) == expected
        assert set(expected) == {"alice", "bob", "carol"}
        assert member_totals(elements) == {group["key"]: group["totals"] for group in api["series"]}

    async def test_past_period_and_its_invoice(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        last = previous_period(current_period())
        api = (await client.get(f"/v1/accounts/acme/billing?period={last}", headers=ALICE)).json()
        invoices = (await client.get("/v1/accounts/acme/invoices", headers=ALICE)).json()["items"]
        elements = parse((await get_page(anonymous_client, f"/billing/acme?period={last}", ALICE)).text)

        fields = page_fields(elements)
        assert fields["period"] == last
        for name, value in api.items():
            if name.endswith("_nano_usd"):
                assert fields[name] == value, name
        assert invoice_rows(elements) == {
            item["id"]: {
                "period": item["period"],
                "status": item["status"],
                "amount_cents": item["amount_cents"],
                "payg_nano_usd": item["payg_nano_usd"],
                "carried_in_nano_usd": item["carried_in_nano_usd"],
                "carried_out_nano_usd": item["carried_out_nano_usd"],
            }
            for item in invoices
        }
        assert [item["amount_cents"] for item in invoices] == [123]

    async def test_user_page_shows_their_own_daily_series_and_no_limit(
        self, anonymous_client: httpx.AsyncClient, db: Database
    ) -> None:
        await seed_world(db)
        await insert_usage(
            db, [{"request_id": "e1", "user": "erin", "started_at": moment_in_period(0), "status": "priced", "cost": 7}]
        )

        elements = parse((await get_page(anonymous_client, "/billing/erin", as_user("erin"))).text)

        assert page_fields(elements)["spending_limit_nano_usd"] is None
        assert {m: list(days.values()) for m, days in chart_points(elements).items()} == {"erin": [(7, 1)]}


class TestLinkTokenAndCookie:
    async def test_token_link_sets_the_cookie_and_redirects_to_the_clean_url(
        self, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        token = make_token("alice")
        last = previous_period(current_period())

        redirect = await anonymous_client.get(f"/billing/acme?token={token}&period={last}")

        assert redirect.status_code == 303
        assert redirect.headers["location"] == f"/billing/acme?period={last}"
        cookie = redirect.headers["set-cookie"]
        assert cookie.startswith(f"metering_token={token};")
        assert {"httponly", "samesite=strict", "path=/billing"} <= {part.strip().lower() for part in cookie.split(";")}
        followed = await get_page(anonymous_client, redirect.headers["location"])
        assert followed.status_code == 200
        assert page_fields(parse(followed.text))["period"] == last
        assert token not in followed.text

    async def test_a_bad_link_token_is_a_401_page_and_sets_nothing(
        self, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        for token in ("not-a-jwt", make_token("alice", expires_in=-3600), make_token("alice", key="x" * 48)):
            response = await get_page(anonymous_client, f"/billing/acme?token={token}")
            assert response.status_code == 401
            assert "set-cookie" not in response.headers
            assert [e.attrs["data-status"] for e in parse(response.text) if e.tag == "h1"] == ["401"]

    async def test_an_expired_cookie_is_a_401_page_that_clears_it(
        self, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        expired = make_token("alice", expires_in=-3600)
        anonymous_client.cookies.set("metering_token", expired, domain="metering.test", path="/billing")

        response = await get_page(anonymous_client, "/billing/acme")

        assert response.status_code == 401
        cleared = response.headers["set-cookie"].lower()
        assert cleared.startswith('metering_token="";') and "max-age=0" in cleared and "path=/billing" in cleared
        assert "metering_token" not in anonymous_client.cookies

    async def test_the_header_wins_over_the_cookie(self, anonymous_client: httpx.AsyncClient, org_month: None) -> None:
        anonymous_client.cookies.set("metering_token", make_token("alice"), domain="metering.test", path="/billing")

        response = await get_page(anonymous_client, "/billing/acme", bearer(make_token("erin")))

        assert response.status_code == 404

    async def test_page_security_headers(self, anonymous_client: httpx.AsyncClient, org_month: None) -> None:
        response = await get_page(anonymous_client, "/billing/acme", ALICE)

        assert response.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        outside_links = response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "<script" not in response.text and "http://" not in outside_links and "https://" not in outside_links


class TestRefusalsMatchTheApi:
    async def test_statuses_equal_the_billing_routes(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        cases = [
            ("alice", (), "acme", 200),
            ("bob", (), "acme", 403),
            ("carol", (), "acme", 403),
            ("dave", (), "acme", 404),
            ("erin", (), "acme", 404),
            ("erin", (), "alice", 404),
            ("alice", (), "no-such-org", 404),
            ("fin", ("finance",), "acme", 200),
            ("root", ("platform_admin",), "acme", 200),
        ]
        seen = []
        for user, roles, account, _ in cases:
            headers = as_user(user, *roles)
            api = await client.get(f"/v1/accounts/{account}/billing", headers=headers)
            page = await get_page(anonymous_client, f"/billing/{account}", headers)
            seen.append((user, roles, account, page.status_code))
            assert page.status_code == api.status_code, (user, account)

        assert seen == cases

    async def test_without_credentials_a_401_page(self, anonymous_client: httpx.AsyncClient, org_month: None) -> None:
        for headers in ({}, {"Authorization": "Basic YWxpY2U6cHc="}, bearer("garbage")):
            response = await get_page(anonymous_client, "/billing/acme", headers)
            assert response.status_code == 401

    async def test_bad_period_or_name_is_a_422_page(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        api = await client.get("/v1/accounts/acme/billing?period=2026-13", headers=ALICE)
        bad_period = await get_page(anonymous_client, "/billing/acme?period=2026-13", ALICE)
        bad_name = await get_page(anonymous_client, "/billing/%3Cacme%3E", ALICE)

        assert (api.status_code, bad_period.status_code, bad_name.status_code) == (422, 422, 422)

    async def test_finance_sees_billing_and_invoices_but_not_usage(
        self, client: httpx.AsyncClient, anonymous_client: httpx.AsyncClient, org_month: None
    ) -> None:
        finance = as_user("fin", "finance")
        usage_api = await client.get("/v1/accounts/acme/usage", headers=finance)
        elements = parse((await get_page(anonymous_client, "/billing/acme", finance)).text)

        assert usage_api.status_code == 403
        assert chart_points(elements) == {} and member_totals(elements) == {}
        billing = (await client.get("/v1/accounts/acme/billing", headers=finance)).json()
        assert page_fields(elements)["payg_nano_usd"] == billing["payg_nano_usd"]
        assert len(invoice_rows(elements)) == 1


class TestEscaping:
    async def test_names_are_shown_not_interpreted(
        self, anonymous_client: httpx.AsyncClient, db: Database, org_month: None
    ) -> None:
        member = "<img src=x onerror=alert(1)>"
        plan = 'team"><b>&'
        async with db.session_scope() as session:
            await create_account(session, member)
            await add_member(session, org="acme", user=member)
            await session.execute(update(Account).where(Account.name == "acme").values(plan=plan))
        await insert_usage(
            db, [{"request_id": "x1", "user": member, "billing_account": "acme", "started_at": moment_in_period(0)}]
        )

        page = await get_page(anonymous_client, "/billing/acme", ALICE)
        elements = parse(page.text)

        assert page.status_code == 200
        assert "<img src=x" not in page.text and "<b>&" not in page.text
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
        assert member in chart_points(elements)
        assert page_fields(elements)["plan"] == plan
