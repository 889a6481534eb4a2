"""The authorize decision on PostgreSQL as one statement: read, lock, check, hold, in one round trip.

Every round trip costs the hot path more CPU than the rest of the decision, so on
PostgreSQL the whole of ``metering.authorize.service``'s rule runs as a single
statement, in autocommit (the statement is its own transaction): the parties, the
named providers and their estimates are read, the billing account's period row is
locked ``FOR UPDATE``, the money rule is applied to the locked values, and the hold
is inserted and added to ``held_nano_usd`` only when the rule allows it. The row
lock lasts from its acquisition to the statement's commit, so concurrent decisions
on one account are serialized exactly as in the step-by-step path (which SQLite,
and the rare cases below, keep using).

The statement does nothing when the decision needs writes the step-by-step path knows
how to make: it answers ``slow`` for an unknown user to create, ``ungranted`` for a
period row to create or credits to grant (a ledger posting), including credits granted
ahead of the period that the plan no longer matches (``metering.credits.service``), and
``extra_credit`` for a payer with grants or prepaid credits to spend (read under the period
row's lock, which one statement's snapshot cannot do: ``metering.credit_grants``), and
``alert`` for a decision that writes a spending-limit event (SPEC §11: its hold takes the
committed pay-as-you-go across one of the account's thresholds or to the limit, or it is
refused for the limit while no ``spending_limit.reached`` of the period exists yet). Those
are a few decisions per account and period, so the statement stays read, lock, hold. The
tests run every outcome on both paths (``tests/metering/hot_path/test_pg_decision.py``
compares them on random states), since the rule is written twice: here in SQL, there in
Python. A hold placed on a row granted ahead whose plan still matches confirms that grant
(the mark is cleared), as the step-by-step path's hold does.

A decision that holds an estimate does not wait for the WAL flush at commit
(``set_config`` in the ``held_nano_usd`` update; refusals write nothing): a decision
only reserves an estimate, and the flush would otherwise be paid with the account's
row locked. If PostgreSQL crashed within the flush delay,
the last decisions' holds would vanish together with their share of
``held_nano_usd`` (one transaction, so the cache stays equal to the sum), their
usage records would fall back to the estimator, and for a moment less would be in
flight than was promised: the same bound as an estimate error, for a crash only.
Money itself (credit grants, ledger postings) is never committed this way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict, Unpack

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.accounts.service import BILL_TO_PLANS
from metering.config import PlanTerms
from metering.errors import ServiceUnavailable
from metering.hot_path.pg_connections import decision_connections

# $1 user, $2 bill_to (NULL: the user pays), $3 named provider ids in order, $4 model, $5 custom key,
# $6 period, $7 now, $8 hold expiry. {plans}: the plan table, {bill_to_plans}: the plans an org may
# bill to, both written into the text as literals by ``decide_statement`` (arrays as parameters
# cost the client and the server more to encode and decode than the rest of the arguments).
DECIDE = """
WITH
plans AS (
    SELECT * FROM ({plans}) AS p(plan, pays_as_you_go, credits_nano_usd, per_seat)
),
named AS (
    SELECT n.id, n.ord, pr.credit_eligible, dp.provider_id IS NOT NULL AS disabled,
           CASE WHEN ce.samples > 0 THEN ce.mean_nano_usd ELSE pr.default_estimate_nano_usd END AS estimate
    FROM unnest($3::text[]) WITH ORDINALITY AS n(id, ord)
    JOIN providers pr ON pr.id = n.id
    LEFT JOIN disabled_providers dp ON dp.account_name = coalesce($2::text, $1::text) AND dp.provider_id = n.id
    LEFT JOIN cost_estimates ce ON ce.provider_id = n.id AND ce.model = $4::text
),
facts AS (
    SELECT u.kind AS user_kind, b.name AS payer, b.kind AS payer_kind, b.plan AS payer_plan,
           b.status AS payer_status, coalesce(pl.pays_as_you_go, false) AS pays_as_you_go,
           CASE WHEN pl.pays_as_you_go THEN b.spending_limit_nano_usd END AS spending_limit,
           coalesce(pl.credits_nano_usd * CASE WHEN pl.per_seat THEN b.seats ELSE 1 END, 0) AS credits_due,
           EXISTS (SELECT 1 FROM memberships m WHERE m.org_name = $2::text AND m.user_name = $1::text) AS is_member,
           EXISTS (SELECT 1 FROM credit_balances cb WHERE cb.account_name = b.name AND cb.available_nano_usd > 0)
             AS has_extra_credit
    FROM (SELECT 1) AS one
    LEFT JOIN accounts u ON u.name = $1::text
    LEFT JOIN accounts b ON b.name = coalesce($2::text, $1::text)
    LEFT JOIN plans pl ON pl.plan = b.plan
),
staged AS (
    SELECT f.*, CASE
        WHEN f.user_kind IS NULL THEN 'slow'
        WHEN f.user_kind <> 'user' THEN 'unknown_account'
        WHEN $2::text IS NOT NULL AND f.payer IS NULL THEN 'unknown_account'
        WHEN $2::text IS NOT NULL AND (f.payer_kind <> 'org' OR f.payer_plan <> ALL ({bill_to_plans})) THEN 'bill_to_not_eligible'
        WHEN $2::text IS NOT NULL AND NOT f.is_member THEN 'not_a_member'
        WHEN NOT EXISTS (SELECT 1 FROM named) THEN 'unknown_provider'
        WHEN NOT EXISTS (SELECT 1 FROM named WHERE NOT disabled) THEN 'provider_disabled'
        WHEN $5::boolean THEN 'custom_key'
        WHEN f.payer_status = 'delinquent' THEN 'account_delinquent'
        WHEN f.has_extra_credit THEN 'extra_credit'
        ELSE 'money'
    END AS stage
    FROM facts f
),
offered AS (
    SELECT n.id, n.ord, n.credit_eligible, n.estimate FROM named n, staged s
    WHERE NOT n.disabled AND (n.credit_eligible OR s.pays_as_you_go OR s.stage <> 'money')
),
locked AS (
    SELECT ap.credits_granted_nano_usd AS granted, ap.credits_granted_ahead AS ahead,
           ap.credits_used_nano_usd AS used, ap.payg_nano_usd AS payg,
           ap.pending_estimate_nano_usd + ap.held_nano_usd AS in_flight,
           ap.pending_payg_only_nano_usd + ap.held_payg_only_nano_usd AS in_flight_payg_only
    FROM account_periods ap, staged s
    WHERE s.stage = 'money' AND ap.account_name = s.payer AND ap.period = $6::text
    FOR UPDATE OF ap
),
figures AS (
    SELECT s.stage, s.payer, s.pays_as_you_go, s.spending_limit, s.credits_due, l.granted, l.ahead, l.used, l.payg,
           l.in_flight, l.in_flight_payg_only, o.id AS provider, o.credit_eligible, coalesce(o.estimate, 0) AS estimate,
           greatest(0, l.granted - l.used - (l.in_flight - l.in_flight_payg_only)) AS credits_remaining,
           l.payg + l.in_flight_payg_only
             + greatest(0, l.used + (l.in_flight - l.in_flight_payg_only) - l.granted) AS payg_committed
    FROM staged s
    LEFT JOIN locked l ON true
    LEFT JOIN LATERAL (SELECT * FROM offered ORDER BY ord LIMIT 1) o ON true
),
ruled AS (
    SELECT f.*, CASE
        WHEN f.stage <> 'money' THEN f.stage
        WHEN f.granted IS NULL OR f.granted < f.credits_due OR (f.ahead AND f.granted <> f.credits_due)
            THEN 'ungranted'
        WHEN f.provider IS NULL THEN 'credits_exhausted'
        WHEN f.credit_eligible AND f.credits_remaining > 0 AND f.estimate <= f.credits_remaining THEN 'allowed'
        WHEN NOT f.pays_as_you_go THEN 'credits_exhausted'
        WHEN f.spending_limit IS NULL THEN 'allowed'
        WHEN f.payg_committed < f.spending_limit
             AND f.payg_committed + f.estimate
                 - CASE WHEN f.credit_eligible THEN least(f.estimate, f.credits_remaining) ELSE 0 END
                 <= f.spending_limit THEN 'allowed'
        ELSE 'spending_limit_reached'
    END AS ruled_outcome
    FROM figures f
),
after_hold AS (
    SELECT r.*, CASE WHEN r.ruled_outcome = 'allowed' AND r.spending_limit > 0 THEN
        r.payg + r.in_flight_payg_only + CASE WHEN r.credit_eligible
            THEN greatest(0, r.used + (r.in_flight - r.in_flight_payg_only) + r.estimate - r.granted)
            ELSE r.estimate + greatest(0, r.used + (r.in_flight - r.in_flight_payg_only) - r.granted) END
    END AS committed_after
    FROM ruled r
),
verdict AS (
    SELECT a.*, CASE
        WHEN a.committed_after IS NOT NULL
             AND floor(a.payg_committed::numeric * 100 / a.spending_limit)
                 <> floor(a.committed_after::numeric * 100 / a.spending_limit)
             AND (a.payg_committed < a.spending_limit AND a.spending_limit <= a.committed_after
                  OR EXISTS (
                      SELECT 1 FROM json_array_elements_text(coalesce(
                          (SELECT al.spending_limit_percent FROM alert_settings al WHERE al.account_name = a.payer),
                          '{limit_percent}'::json)) AS t(percent)
                      WHERE a.payg_committed::numeric * 100 < t.percent::numeric * a.spending_limit
                        AND t.percent::numeric * a.spending_limit <= a.committed_after::numeric * 100))
            THEN 'alert'
        WHEN a.ruled_outcome = 'spending_limit_reached' AND a.spending_limit > 0
             AND NOT EXISTS (SELECT 1 FROM events e
                             WHERE e.dedupe_key = 'spending_limit.reached:' || a.payer || ':' || $6::text)
            THEN 'alert'
        ELSE a.ruled_outcome
    END AS outcome
    FROM after_hold a
),
new_hold AS (
    INSERT INTO holds (id, account_name, user_name, provider_id, model, period, amount_nano_usd, status,
                       created_at, expires_at)
    SELECT gen_random_uuid()::text, v.payer, $1::text, v.provider, $4::text, $6::text, v.estimate, 'held',
           $7::timestamptz, $8::timestamptz
    FROM verdict v WHERE v.outcome = 'allowed'
    RETURNING id, amount_nano_usd
),
held AS (
    UPDATE account_periods ap SET held_nano_usd = ap.held_nano_usd + h.amount_nano_usd,
        held_payg_only_nano_usd = ap.held_payg_only_nano_usd
            + CASE WHEN v.credit_eligible THEN 0 ELSE h.amount_nano_usd END,
        credits_granted_ahead = false
    FROM new_hold h, verdict v
    WHERE ap.account_name = v.payer AND ap.period = $6::text
    RETURNING h.id, set_config('synchronous_commit', 'off', true) AS commit_mode
)
SELECT v.outcome, v.payer,
       CASE WHEN v.outcome IN ('allowed', 'custom_key') THEN ARRAY(SELECT id FROM offered ORDER BY ord) END AS providers,
       (SELECT id FROM held WHERE commit_mode IS NOT NULL) AS hold_id, v.estimate, v.spending_limit, v.granted, v.used, v.payg, v.in_flight,
       v.in_flight_payg_only, v.credit_eligible
FROM verdict v
"""

# A connection PostgreSQL or the network dropped: the statement's fate is unknown to us.
_CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)


@dataclass(frozen=True, slots=True)
class OneStatementDecision:
    """The statement's answer. ``outcome`` is a refusal reason, ``allowed``, ``custom_key``, ``slow`` (a user to
    create), ``ungranted`` (a period row to create or grant, ``payer`` named), ``extra_credit`` (a payer with
    grants to spend) or ``alert`` (a decision that
    writes a spending-limit event, ``metering.alerts.service.after_decision``);
    the money columns are those of the locked row before the hold (None when no row was locked)."""

    outcome: str
    payer: str | None
    providers: list[str] | None
    hold_id: str | None
    estimate: int
    spending_limit: int | None
    granted: int | None
    used: int | None
    payg: int | None
    in_flight: int | None
    in_flight_payg_only: int | None
    # Of the provider the estimate is for (None when no provider was offered).
    credit_eligible: bool | None


def decide_statement(plans: dict[str, PlanTerms], limit_percent: Sequence[int] = ()) -> str:
    """``DECIDE`` for the plan table ``plans`` and the default spending-limit alert thresholds
    ``limit_percent`` (one text per pair, so one prepared statement)."""
    return _decide_statement(
        tuple((name, terms.pay_as_you_go, terms.credits_nano_usd, terms.per_seat) for name, terms in plans.items()),
        tuple(int(percent) for percent in limit_percent),
    )


@functools.lru_cache(maxsize=16)
def _decide_statement(plans: tuple[tuple[str, bool, int, bool], ...], limit_percent: tuple[int, ...]) -> str:
    rows = [
        f"({_text(name)}, {_boolean(pays_as_you_go)}, {int(credits)}::bigint, {_boolean(per_seat)})"
        for name, pays_as_you_go, credits, per_seat in plans
    ]
    no_plans = "SELECT NULL::text, NULL::boolean, NULL::bigint, NULL::boolean WHERE false"
    table = f"VALUES {', '.join(rows)}" if rows else no_plans
    bill_to_plans = f"ARRAY[{', '.join(_text(name) for name in BILL_TO_PLANS)}]::text[]"
    thresholds = "[" + ", ".join(str(percent) for percent in limit_percent) + "]"
    return (
        DECIDE.replace("{plans}", table)
        .replace("{bill_to_plans}", bill_to_plans)
        .replace("{limit_percent}", thresholds)
    )


def _text(value: str) -> str:
    """A SQL string literal, whatever ``standard_conforming_strings`` is (no backslash or NUL to escape)."""
    if "\\" in value or "\x00" in value:
        raise ValueError(f"a plan name cannot contain a backslash or NUL: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def _boolean(value: bool) -> str:
    return "true" if value else "false"


class DecisionArguments(TypedDict):
    """What ``decide_on`` decides on, after the connection."""

    user: str
    bill_to: str | None
    provider_ids: Sequence[str]
    model: str
    custom_key: bool
    period: str
    now: datetime
    expires_at: datetime
    plans: dict[str, PlanTerms]
    # The spending-limit alert thresholds of an account that chose none (``Settings.alert_spending_limit_percent``).
    alert_limit_percent: Sequence[int]


class PgDecisionRepository:
    async def decide(self, engine: AsyncEngine, **decision: Unpack[DecisionArguments]) -> OneStatementDecision:
        """``decide_on`` in autocommit on one of the decision's own connections to ``engine``'s database.

        Below SQLAlchemy's session, execution and pool layers, whose per-statement work
        costs several times the driver's (``metering.hot_path.pg_connections``): a
        driver connection, the driver's cached prepared statement. A connection that
        fails other than with an error of the statement itself is dropped, never reused.
        """
        connections = decision_connections(engine)
        driver = await connections.acquire()
        try:
            if connections.begin is None:
                answer = await self.decide_on(driver, **decision)
            else:
                answer = await self._decide_in_transaction(driver, connections.begin, decision)
        except _CONNECTION_LOST as error:
            connections.discard(driver)
            raise ServiceUnavailable("the database connection was lost; ask again") from error
        except asyncpg.PostgresError:
            connections.release(driver)  # the server rolled the statement back; the connection is sound
            raise
        except BaseException:  # cancelled mid-statement: the connection's state is unknown
            connections.discard(driver)
            raise
        connections.release(driver)
        return answer

    async def _decide_in_transaction(
        self, driver: asyncpg.Connection, begin: str, decision: DecisionArguments
    ) -> OneStatementDecision:
        """Behind PgBouncer: ``decide_on`` in a transaction opened by ``begin``, which sets the timeout
        the connection could not be opened with; one more round trip each side of the statement."""
        await driver.execute(begin)
        try:
            answer = await self.decide_on(driver, **decision)
        except asyncpg.PostgresError:
            await driver.execute("ROLLBACK")
            raise
        await driver.execute("COMMIT")
        return answer

    async def decide_on(
        self,
        driver: asyncpg.Connection,
        *,
        user: str,
        bill_to: str | None,
        provider_ids: Sequence[str],
        model: str,
        custom_key: bool,
        period: str,
        now: datetime,
        expires_at: datetime,
        plans: dict[str, PlanTerms],
        alert_limit_percent: Sequence[int] = (),
    ) -> OneStatementDecision:
        """Run ``DECIDE`` on an asyncpg connection: its own transaction, or the caller's when one is open."""
        row = await driver.fetchrow(
            decide_statement(plans, alert_limit_percent),
            user,
            bill_to,
            list(provider_ids),
            model,
            custom_key,
            period,
            now,
            expires_at,
        )
        if row is None:
            raise RuntimeError("DECIDE answered no row; it answers one for every request")
        return OneStatementDecision(*row)


pg_decision_repository = PgDecisionRepository()
