"""The billing page of the demo's team org in headless Chromium: what it shows equals the API's JSON.

A real ``metering serve`` runs on the database the demo left behind (its data folder holds
the secrets the demo signed tokens with); the screenshot is kept as an artifact.
"""

from __future__ import annotations

from datetime import timedelta

import httpx

from demo.platform import sign_token
from metering.periods import period_bounds
from tests.demo.conftest import DemoRun
from tests.support.browser import open_page, read_chart_series, read_fields, require_browser, save_screenshot
from tests.support.servers import metering_server

ORG, ADMIN = "acme", "alice"


async def test_the_demo_orgs_page_shows_the_apis_numbers(demo_run: DemoRun) -> None:
    require_browser()
    token = sign_token(demo_run.jwt_secret, ADMIN)
    start, end = period_bounds(demo_run.period)
    env = {"METERING_DATABASE_URL": demo_run.database_url, "METERING_DATA_DIR": str(demo_run.data_dir)}
    with metering_server(env) as base_url:
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
            billing = (await http.get(f"/v1/accounts/{ORG}/billing", params={"period": demo_run.period})).json()
            usage = (
                await http.get(
                    f"/v1/accounts/{ORG}/usage",
                    params={
                        "from": start.date().isoformat(),
                        "to": (end - timedelta(days=1)).date().isoformat(),
                        "interval": "day",
                        "group_by": "member",
                    },
                )
            ).json()
        async with open_page() as page:
            response = await page.goto(f"{base_url}/billing/{ORG}?period={demo_run.period}&token={token}")
            fields = await read_fields(page)
            members = await read_chart_series(page)
            screenshot = await save_screenshot(page, f"billing-demo-{ORG}")

    assert response is not None and response.status == 200
    money = {name: value for name, value in billing.items() if name.endswith("_nano_usd")}
    assert {name: fields[name] for name in money} == money
    assert billing["payg_nano_usd"] > 0 and billing["credits_used_nano_usd"] > 0  # a month that cost something
    assert (fields["account"], fields["period"]) == (ORG, demo_run.period)
    assert members == [(group["key"], 1, group["totals"]["cost_nano_usd"]) for group in usage["series"]]
    # paula names acme too, but is no member: her requests bill her, not the org.
    assert sorted(member for member, _, _ in members) == ["alice", "bob", "carol"]
    assert screenshot.stat().st_size > 10_000
