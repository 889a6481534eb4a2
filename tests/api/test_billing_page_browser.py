"""The billing page in a real headless Chromium against a real ``metering serve`` on loopback.

The browser opens the printed-link form (``?token=``), follows the redirect with the
cookie it was given, and the values it renders are compared with the API's JSON from
the same server. SQLite only: the HTTP tests of the page run on both databases, and
the browser adds nothing database-specific.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from metering.db import Database
from metering.periods import current_period, period_bounds
from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY
from tests.factories.billing_data import bearer, make_token
from tests.support.browser import open_page, read_chart_series, read_fields, require_browser, save_screenshot
from tests.support.pages import seed_org_month
from tests.support.servers import metering_server


@pytest.fixture
def backend() -> str:
    return "sqlite"


def server_env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        "METERING_ENVIRONMENT": "embedded",
        "METERING_DATABASE_URL": database_url,
        "METERING_DATA_DIR": str(data_dir),
        "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
        "METERING_SECRET_KEY": TEST_SECRET_KEY,
        "METERING_JWT_SECRET": TEST_JWT_SECRET,
    }


async def api_json(base_url: str, path: str, token: str, **params: str) -> dict:
    async with httpx.AsyncClient(base_url=base_url, headers=bearer(token)) as http:
        response = await http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()


async def test_org_page_in_chromium_matches_the_api(
    client: httpx.AsyncClient, db: Database, database_url: str, tmp_path: Path
) -> None:
    require_browser()
    await seed_org_month(client, db)
    token = make_token("alice")
    start, end = period_bounds(current_period())

    with metering_server(server_env(database_url, tmp_path)) as base_url:
        billing = await api_json(base_url, "/v1/accounts/acme/billing", token)
        usage = await api_json(
            base_url,
            "/v1/accounts/acme/usage",
            token,
            **{"from": start.date().isoformat(), "to": (end - timedelta(days=1)).date().isoformat()},
        )
        async with open_page() as page:
            response = await page.goto(f"{base_url}/billing/acme?token={token}")
            landed_on = page.url
            fields = await read_fields(page)
            members = await read_chart_series(page)
            cookies = await page.context.cookies()
            script_sees_cookie = await page.evaluate("document.cookie")
            screenshot = await save_screenshot(page, "billing-acme")

    assert response is not None and response.status == 200
    assert landed_on == f"{base_url}/billing/acme"
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
        ("metering_token", True, "Strict", "/billing")
    ]
    assert script_sees_cookie == ""
    for name, value in billing.items():
        if name.endswith("_nano_usd"):
            assert fields[name] == value, name
    assert (fields["account"], fields["plan"], fields["period"]) == (
        billing["account"],
        billing["plan"],
        billing["period"],
    )
    assert members == [(group["key"], 1, group["totals"]["cost_nano_usd"]) for group in usage["series"]]
    assert [member for member, _, _ in members] == ["alice", "bob", "carol"]
    assert screenshot.stat().st_size > 10_000
