"""PostgreSQL's one-statement decision equals the step-by-step decision, on random account states.

The rule is written twice (SQL in ``metering.hot_path.pg_decision``, Python in
``metering.authorize.service``): both run here on the same state, inside one
transaction that is rolled back, and must agree on every field and on the hold they
write. The scenarios are drawn so that every outcome occurs, and the test checks it does.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from metering.alerts.rules import AlertTerms, decision_events
from metering.authorize.catalog import provider_catalog
from metering.authorize.service import AuthorizeRequest, Decision, authorize_service, decision_of, statement_arguments
from metering.charging.rule import Figures, money_refusal
from metering.config import PlanTerms, get_settings
from metering.credits.service import credits_for
from metering.db import Database
from metering.hot_path.pg_decision import pg_decision_repository
from metering.models import Account
from metering.periods import period_of, utcnow
from tests.metering.authorize.helpers import ESTIMATE, seed

SCENARIOS = 500
USERS = ["alice", "alice", "bob", "bob", "acme", "ghost"]  # pro, free, an org, unknown
BILL_TO = [None, None, None, "acme", "acme", "solo-org", "solo-org", "alice", "nowhere"]
PROVIDERS = ["together", "fireworks-ai", "paid-only", "nowhere"]
EVERY_OUTCOME = {
    "allowed",
    "custom_key",
    "slow",
    "ungranted",
    "unknown_account",
    "not_a_member",
    "bill_to_not_eligible",
    "provider_disabled",
    "unknown_provider",
    "credits_exhausted",
    "spending_limit_reached",
    "account_delinquent",
    "alert",
}


def amount(rng: random.Random) -> int:
    """Mostly near the estimates (100,000-300,000 nano-USD), where the rule's boundaries are."""
    return rng.choice([0, rng.randrange(0, 1_000_000), rng.randrange(0, 10**10), 100_000, 250_000])


async def apply_state(connection: AsyncConnection, rng: random.Random, payer: str, period: str, model: str) -> None:
    """Status, limit, disabled providers, period row and an estimate for the would-be payer."""
    account = await connection.execute(text("SELECT plan, seats FROM accounts WHERE name = :n"), {"n": payer})
    row = account.first()
    if row is None:
        return
    await connection.execute(
        text("UPDATE accounts SET status = :s, spending_limit_nano_usd = :l WHERE name = :n"),
        {"s": rng.choice(["active"] * 5 + ["delinquent"]), "l": rng.choice([None, amount(rng), 0]), "n": payer},
    )
    for provider in rng.sample(PROVIDERS[:3], rng.choice([0, 0, 0, 1, 2, 3])):
        await connection.execute(text("INSERT INTO disabled_providers VALUES (:a, :p)"), {"a": payer, "p": provider})
    due = credits_for(Account(name=payer, plan=row.plan, seats=row.seats))
    granted = rng.choice([None, due, due, due, due, max(0, due - 1), due + amount(rng), due + amount(rng)])
    if granted is not None:
        pending, held = amount(rng), amount(rng)
        await connection.execute(
            text(
                "INSERT INTO account_periods (account_name, period, granted_seats, credits_granted_nano_usd,"
                " credits_used_nano_usd, payg_nano_usd, written_off_nano_usd, pending_estimate_nano_usd, held_nano_usd,"
                " pending_payg_only_nano_usd, held_payg_only_nano_usd, credits_granted_ahead)"
                " VALUES (:a, :p, :seats, :g, :u, :payg, 0, :pending, :held, :pending_payg_only, :held_payg_only,"
                " :ahead)"
            ),
            {
                "a": payer,
                "p": period,
                "seats": row.seats,
                "g": granted,
                # Granted ahead of the period: decided as usual while the plan still matches, else granted first.
                "ahead": rng.random() < 0.25,
                "u": rng.choice([0, amount(rng), granted]),
                "payg": amount(rng),
                "pending": pending,
                "held": held,
                "pending_payg_only": rng.choice([0, pending, rng.randint(0, pending)]),
                "held_payg_only": rng.choice([0, held, rng.randint(0, held)]),
            },
        )
    if rng.random() < 0.5:
        await connection.execute(
            text("INSERT INTO cost_estimates VALUES (:p, :m, :samples, :mean, now())"),
            {"p": rng.choice(PROVIDERS[:3]), "m": model, "samples": rng.choice([0, 1, 20]), "mean": amount(rng)},
        )
    if rng.random() < 0.5:  # the period's limit already reached once: a refusal for it writes nothing more
        await connection.execute(
            text(
                "INSERT INTO events (webhook_id, type, account_name, period, dedupe_key, audience, body, created_at)"
                " VALUES ('evt_seeded', 'spending_limit.reached', :a, :p, :k, 'account', '{}', now())"
            ),
            {"a": payer, "p": period, "k": f"spending_limit.reached:{payer}:{period}"},
        )


async def written(connection: AsyncConnection, period: str) -> tuple:
    """The holds, held totals, marks of credits granted ahead and events a decision left (ids aside)."""
    held = await connection.execute(
        text(
            "SELECT account_name, held_nano_usd, held_payg_only_nano_usd, credits_granted_ahead FROM account_periods"
            " WHERE period = :p ORDER BY 1"
        ),
        {"p": period},
    )
    holds = await connection.execute(
        text(
            "SELECT account_name, user_name, provider_id, model, period, amount_nano_usd, status FROM holds ORDER BY 1, 6"
        )
    )
    events = await connection.execute(text("SELECT dedupe_key FROM events ORDER BY 1"))
    return list(held), list(holds), list(events)


def without_hold_id(decision: Decision) -> Decision:
    return replace(decision, hold_id=None)


async def test_one_statement_equals_step_by_step(db: Database, backend: str) -> None:
    if backend != "postgres":
        pytest.skip("the one-statement decision is PostgreSQL's")
    await seed(db)
    rng = random.Random(20261122)
    seen: set[str] = set()
    compared = 0
    for index in range(SCENARIOS):
        now = utcnow()
        period = period_of(now)
        user, bill_to = rng.choice(USERS), rng.choice(BILL_TO)
        model = f"org/model-{index}"  # a fresh estimate key: no cached estimate from an earlier scenario
        request = AuthorizeRequest(
            user=user,
            bill_to=bill_to,
            model=model,
            custom_key=rng.random() < 0.15,
            provider=" ".join(rng.sample(PROVIDERS, rng.randint(1, 3))),
        )
        provider_catalog.clear()
        async with db.engine.connect() as connection:
            await connection.begin()
            await apply_state(connection, rng, bill_to or user, period, model)
            driver = (await connection.get_raw_connection()).driver_connection
            await driver.execute("SAVEPOINT one_statement")
            answer = await pg_decision_repository.decide_on(driver, **statement_arguments(request, now))
            fast, fast_writes = decision_of(answer), await written(connection, period)
            await driver.execute("ROLLBACK TO SAVEPOINT one_statement")
            step = await authorize_service.decide_step_by_step(AsyncSession(bind=connection), request=request)
            step_writes = await written(connection, period)
            await connection.rollback()
        seen.add(answer.outcome if answer.outcome in EVERY_OUTCOME else "?")
        if fast is None:
            # Left to the step-by-step path, which created the user, granted the credits or wrote an alert first.
            if answer.outcome == "alert":
                assert step_writes[2] != fast_writes[2], f"scenario {index}: {request}: an alert with no event"
            continue
        context = f"scenario {index}: {request} → {answer}"
        assert without_hold_id(fast) == without_hold_id(step), context
        assert (fast.hold_id is None) == (step.hold_id is None), context
        assert fast_writes == step_writes, context
        compared += 1
    assert seen == EVERY_OUTCOME
    assert compared >= SCENARIOS // 2


@pytest.mark.parametrize(
    ("plans", "outcome"),
    [
        ({}, "credits_exhausted"),  # no plan table: alice's plan neither pays as it goes nor grants credits
        (
            {"o'brien": PlanTerms(credits_nano_usd=0), "pro": PlanTerms(credits_nano_usd=0, pay_as_you_go=True)},
            "allowed",
        ),
    ],
)
async def test_the_plan_table_is_written_into_the_statement(
    db: Database, backend: str, plans: dict[str, PlanTerms], outcome: str
) -> None:
    """Any plan table, quotes in names included, makes a valid statement; the payer's plan is read from it."""
    if backend != "postgres":
        pytest.skip("the one-statement decision is PostgreSQL's")
    await seed(db)
    now = utcnow()
    request = AuthorizeRequest(user="alice", bill_to=None, provider="together", model="org/m")
    async with db.engine.connect() as connection:
        await connection.begin()
        await connection.execute(
            text(
                "INSERT INTO account_periods (account_name, period, granted_seats, credits_granted_nano_usd,"
                " credits_used_nano_usd, payg_nano_usd, written_off_nano_usd, pending_estimate_nano_usd, held_nano_usd,"
                " pending_payg_only_nano_usd, held_payg_only_nano_usd)"
                " VALUES ('alice', :p, 1, 0, 0, 0, 0, 0, 0, 0, 0)"
            ),
            {"p": period_of(now)},
        )
        driver = (await connection.get_raw_connection()).driver_connection
        answer = await pg_decision_repository.decide_on(driver, **{**statement_arguments(request, now), "plans": plans})
        await connection.rollback()
    assert answer.outcome == outcome


class TestStatementIsTheRule:
    """The statement's verdict and figures are ``metering.charging.rule``'s, on random totals of one row."""

    @given(
        user=st.sampled_from(["alice", "bob"]),  # pro (pay-as-you-go) and free
        provider=st.sampled_from(["together", "paid-only"]),  # credit-eligible and not
        extra_credits=st.integers(0, 3_000_000),
        used=st.integers(0, 3_000_000),
        payg=st.integers(0, 3_000_000),
        pending=st.tuples(st.integers(0, 2_000_000), st.integers(0, 2_000_000)),
        held=st.tuples(st.integers(0, 2_000_000), st.integers(0, 2_000_000)),
        limit=st.none() | st.integers(0, 6_000_000),
    )
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    async def test_on_random_totals(
        self,
        db: Database,
        backend: str,
        user: str,
        provider: str,
        extra_credits: int,
        used: int,
        payg: int,
        pending: tuple[int, int],
        held: tuple[int, int],
        limit: int | None,
    ) -> None:
        if backend != "postgres":
            pytest.skip("the one-statement decision is PostgreSQL's")
        async with db.session_scope() as session:
            seeded = await session.get(Account, "alice") is not None  # examples share the test's database
        if not seeded:
            await seed(db)
        now = utcnow()
        period = period_of(now)
        due = {"alice": 2_000_000_000, "bob": 100_000_000}[user]
        granted = due + extra_credits
        used = min(used, granted) if used % 3 else granted  # a third of the time, every credit is used
        (pending_eligible, pending_payg_only), (held_eligible, held_payg_only) = pending, held
        request = AuthorizeRequest(user=user, bill_to=None, provider=provider, model="org/rule")
        async with db.engine.connect() as connection:
            await connection.begin()
            await connection.execute(
                text("UPDATE accounts SET spending_limit_nano_usd = :l WHERE name = :n"), {"l": limit, "n": user}
            )
            await connection.execute(
                text(
                    "INSERT INTO account_periods (account_name, period, granted_seats, credits_granted_nano_usd,"
                    " credits_used_nano_usd, payg_nano_usd, written_off_nano_usd, pending_estimate_nano_usd,"
                    " held_nano_usd, pending_payg_only_nano_usd, held_payg_only_nano_usd)"
                    " VALUES (:a, :p, 1, :g, :u, :payg, 0, :pending, :held, :pending_payg_only, :held_payg_only)"
                ),
                {
                    "a": user,
                    "p": period,
                    "g": granted,
                    "u": used,
                    "payg": payg,
                    "pending": pending_eligible + pending_payg_only,
                    "held": held_eligible + held_payg_only,
                    "pending_payg_only": pending_payg_only,
                    "held_payg_only": held_payg_only,
                },
            )
            driver = (await connection.get_raw_connection()).driver_connection
            answer = await pg_decision_repository.decide_on(driver, **statement_arguments(request, now))
            after = await connection.execute(
                text(
                    "SELECT held_nano_usd, held_payg_only_nano_usd FROM account_periods WHERE account_name = :a AND period = :p"
                ),
                {"a": user, "p": period},
            )
            held_after = tuple(after.one())
            await connection.rollback()

        figures = Figures(
            granted,
            used,
            payg,
            pending_eligible + pending_payg_only + held_eligible + held_payg_only,
            pending_payg_only + held_payg_only,
        )
        eligible = provider == "together"
        estimate = {"together": ESTIMATE, "paid-only": 300_000}[provider]
        pays_as_you_go = user == "alice"
        if not pays_as_you_go and not eligible:
            expected = "credits_exhausted"  # a free account is offered only credit-eligible providers
        else:
            expected = (
                money_refusal(
                    figures,
                    pays_as_you_go=pays_as_you_go,
                    limit=limit if pays_as_you_go else None,
                    credit_eligible=eligible,
                    estimate=estimate,
                )
                or "allowed"
            )
        before_events = figures
        if expected in ("allowed", "spending_limit_reached") and pays_as_you_go:
            after = figures.with_hold(estimate, credit_eligible=eligible) if expected == "allowed" else figures
            terms = AlertTerms(limit, (), tuple(get_settings().alert_spending_limit_percent))
            refused = expected != "allowed"
            if decision_events(user, period, before=before_events, after=after, terms=terms, refused=refused):
                expected = "alert"  # the step-by-step path writes the event with the decision
        assert answer.outcome == expected
        if expected == "alert":
            assert decision_of(answer) is None
            assert held_after == (held_eligible + held_payg_only, held_payg_only)
            return
        decision = decision_of(answer)
        after_figures = figures.with_hold(estimate, credit_eligible=eligible) if expected == "allowed" else figures
        assert decision.credits_remaining_nano_usd == after_figures.credits_remaining
        assert decision.spending_limit_remaining_nano_usd == (
            after_figures.limit_remaining(limit) if pays_as_you_go else None
        )
        if expected == "allowed":
            assert held_after == (
                held_eligible + held_payg_only + estimate,
                held_payg_only + (0 if eligible else estimate),
            )
        else:
            assert held_after == (held_eligible + held_payg_only, held_payg_only)
