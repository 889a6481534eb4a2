"""A spending limit under a burst, through the app, the usage route and collect-costs (SPEC §5.1).

In flight to a provider that is not credit-eligible counts toward pay-as-you-go in full, even
while credits remain: the limit is passed by estimate error only, and ``verify`` breaches a
period passed by more.
"""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import select

from jobs.collect_costs import run_once
from metering.authorize.catalog import provider_catalog
from metering.db import Database
from metering.holds.service import holds_service
from metering.ledger.verify import verify
from metering.models import AccountPeriod
from metering.periods import current_period, utcnow
from simulator.server import SimulatorHandle
from tests.factories.accounts import add_member, create_account
from tests.factories.providers import create_provider
from tests.metering.authorize.helpers import set_limit

ESTIMATE = 100_000
LIMIT = 1_000_000
BURST = 120


async def org_with_limit(db: Database, simulator: SimulatorHandle) -> None:
    """acme: team, one seat ($2 of credits), a limit of 10 estimates; paid-only: not credit-eligible."""
    provider_catalog.clear()
    async with db.session_scope() as session:
        await create_account(session, "alice", plan="pro")
        await create_account(session, "acme", plan="team", seats=1)
        await add_member(session, org="acme", user="alice")
        await create_provider(
            session, "paid-only", url=simulator.base_url, credit_eligible=False, default_estimate_nano_usd=ESTIMATE
        )
    await set_limit(db, "acme", LIMIT)


async def burst(client: httpx.AsyncClient) -> list[dict]:
    body = {"user": "alice", "bill_to": "acme", "provider": "paid-only", "model": "org/m"}
    answers = await asyncio.gather(*(client.post("/internal/v1/authorize", json=body) for _ in range(BURST)))
    assert {answer.status_code for answer in answers} == {200}
    return [answer.json() for answer in answers]


async def record_and_price(
    client: httpx.AsyncClient, db: Database, simulator: SimulatorHandle, hold_ids: list[str]
) -> None:
    """A usage record per hold, each costing exactly its estimate, then one collect-costs pass."""
    started = utcnow().isoformat()
    records = [
        {
            "request_id": f"req-{i}",
            "provider": "paid-only",
            "user": "alice",
            "bill_to": "acme",
            "model": "org/m",
            "started_at": started,
            "hold_id": hold_id,
        }
        for i, hold_id in enumerate(hold_ids)
    ]
    answer = await client.post("/internal/v1/usage", json={"records": records})
    assert answer.json()["accepted"] == len(records)
    simulator.preload(costs={record["request_id"]: ESTIMATE for record in records})
    assert f"priced={len(records)}" in await run_once(db)


async def period(db: Database) -> AccountPeriod:
    async with db.session_scope() as session:
        return (
            await session.scalars(
                select(AccountPeriod).where(
                    AccountPeriod.account_name == "acme", AccountPeriod.period == current_period()
                )
            )
        ).one()


async def test_a_burst_to_a_provider_credits_cannot_pay_stops_at_the_limit(
    client: httpx.AsyncClient, db: Database, simulator: SimulatorHandle
) -> None:
    await org_with_limit(db, simulator)

    answers = await burst(client)

    allowed = [answer for answer in answers if answer["allowed"]]
    assert len(allowed) == LIMIT // ESTIMATE
    assert {answer["reason"] for answer in answers if not answer["allowed"]} == {"spending_limit_reached"}
    assert sorted(answer["spending_limit_remaining_nano_usd"] for answer in allowed) == [
        i * ESTIMATE for i in range(LIMIT // ESTIMATE)
    ]
    # Credits are untouched by what they can never pay.
    assert {answer["credits_remaining_nano_usd"] for answer in allowed} == {2_000_000_000}
    row = await period(db)
    assert (row.held_nano_usd, row.held_payg_only_nano_usd) == (LIMIT, LIMIT)

    await record_and_price(client, db, simulator, [answer["hold_id"] for answer in allowed])

    row = await period(db)
    assert (row.payg_nano_usd, row.credits_used_nano_usd, row.pending_estimate_nano_usd) == (LIMIT, 0, 0)
    assert (row.held_nano_usd, row.held_payg_only_nano_usd, row.pending_payg_only_nano_usd) == (0, 0, 0)
    report = await verify(db)
    assert report.ok, [line for check in report.checks for line in check.breaches]


async def test_verify_breaches_a_limit_passed_by_more_than_estimate_error(
    client: httpx.AsyncClient, db: Database, simulator: SimulatorHandle
) -> None:
    """Holds placed past the check (as the rule that ignored in-flight money did) are caught."""
    await org_with_limit(db, simulator)
    allowed = [answer["hold_id"] for answer in await burst(client) if answer["allowed"]]
    async with db.session_scope() as session:
        smuggled = [
            await holds_service.place_hold(
                session,
                account="acme",
                period=current_period(),
                user="alice",
                provider_id="paid-only",
                model="org/m",
                amount_nano_usd=ESTIMATE,
                credit_eligible=False,
                now=utcnow(),
            )
            for _ in range(5)
        ]

    await record_and_price(client, db, simulator, allowed + smuggled)

    assert (await period(db)).payg_nano_usd == LIMIT + 5 * ESTIMATE
    check = (await verify(db)).check("spending_limits")
    assert check.breach_count == 1
    assert "more than the 0 nano-USD of estimate error" in check.breaches[0]
