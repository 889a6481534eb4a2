"""The authorize decision (SPEC §5.1): may this request be routed, who pays, and a hold for its estimate.

Order of checks, the first failing one is the reason:

1. the user: created on the free plan when unknown; an org name → ``unknown_account``;
2. ``bill_to`` (``metering.accounts.service.bill_to_refusal``): ``unknown_account``,
   ``bill_to_not_eligible``, ``not_a_member``;
3. providers, in the caller's order, duplicates dropped: none registered →
   ``unknown_provider``; all registered ones disabled for the billing account →
   ``provider_disabled``; unknown ones are dropped silently when others remain;
4. a custom-key request is allowed here: nothing is spent, so no hold and no figures;
5. ``account.status == 'delinquent'`` → ``account_delinquent``;
6. money, on the billing account's period row, locked until commit (so concurrent
   decisions on one account are serialized and each sees the holds before it;
   SQLite: the BEGIN IMMEDIATE transaction serializes them all).

On PostgreSQL the whole decision is one statement, one round trip
(``metering.hot_path.pg_decision``). When the payer's period is not granted yet (its row
missing, below its plan's credits, or granted ahead for a plan since changed), the payer is
granted in a batch with the others waiting (``metering.hot_path.grant_batches``) and the
statement asked again. Decisions that must create the user, those the batch could not
serve, and every decision on SQLite go step by step (``decide_step_by_step``), the
reference the statement is tested against.

``authorize`` is an own-transaction entry point: it is called outside any request's transaction
(the API's fast lane), so each decision and its hold commit in a transaction of its own, and a
batch of grants in another.

The money rule is ``metering.charging.rule``: one pure function of the locked row's
totals, the same rule the settle split and ``metering verify`` read. Allowed → a hold of
the estimate in the same transaction; the figures returned are recomputed after it.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from metering import metrics
from metering.accounts.repository import account_repository
from metering.accounts.service import account_service, bill_to_refusal
from metering.alerts.service import alerts_service
from metering.authorize.catalog import provider_catalog
from metering.authorize.dialects import postgres_decision_paths, sqlite_decision_paths
from metering.authorize.repository import Party, authorize_repository
from metering.balances.repository import PeriodMoney, balances_repository
from metering.charging.rule import Figures, money_refusal
from metering.config import get_settings
from metering.credit_grants.service import credit_grant_service
from metering.credits.service import credits_for, credits_service
from metering.db import Database
from metering.holds.estimates import estimates_service
from metering.holds.service import hold_expiry, holds_service
from metering.hot_path.grant_batches import granted_in_batch
from metering.hot_path.pg_decision import DecisionArguments, OneStatementDecision, pg_decision_repository
from metering.models import Account
from metering.periods import period_of, utcnow

# Refusals settled before a payer is: no billing account in the answer.
_PAYERLESS = frozenset({"unknown_account", "bill_to_not_eligible", "not_a_member"})
# The statement's answer when the payer's period must be granted first (``metering.hot_path.pg_decision``).
UNGRANTED = "ungranted"
# Its answers that leave the decision to the step-by-step path: a user to create, a period to grant,
# an alert event to write, grants to read under the lock.
_STEP_BY_STEP = frozenset({"slow", UNGRANTED, "alert", "extra_credit"})


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    user: str
    bill_to: str | None
    provider: str
    model: str
    custom_key: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    billing_account: str | None
    providers: list[str]
    reason: str | None = None
    hold_id: str | None = None
    credits_remaining_nano_usd: int | None = None
    spending_limit_remaining_nano_usd: int | None = None


def figures_of(row: PeriodMoney, extra: int = 0) -> Figures:
    """The rule's figures of a locked period row and the payer's spendable grants ``extra``."""
    return Figures(
        granted=row.credits_granted_nano_usd,
        used=row.credits_used_nano_usd,
        payg=row.payg_nano_usd,
        in_flight=row.pending_estimate_nano_usd + row.held_nano_usd,
        in_flight_payg_only=row.pending_payg_only_nano_usd + row.held_payg_only_nano_usd,
        extra=extra,
    )


class DecisionPaths(Protocol):
    """Which paths a decision can take on an engine (``metering.authorize.dialects``)."""

    # True: a decision is tried first as one statement (``metering.hot_path.pg_decision``).
    decides_in_one_statement: bool


# Step-by-step decisions in flight per database, at most the pool's steady size: beyond it,
# the pool would open and close an overflow connection per decision (a PostgreSQL backend
# each), which costs far more than waiting here for a pooled one. The one-statement path
# has its own cap (``metering.hot_path.pg_connections``).
_slots: weakref.WeakKeyDictionary[Database, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _step_by_step_slots(database: Database) -> asyncio.Semaphore:
    slots = _slots.get(database)
    if slots is None:
        size = getattr(database.engine.pool, "size", lambda: 10)()
        slots = _slots[database] = asyncio.Semaphore(max(1, size))
    return slots


@functools.cache
def _decisions_counter(reason: str) -> Counter:
    """``metrics.authorize_decisions`` of one reason, looked up once rather than per decision."""
    return metrics.authorize_decisions.labels(reason=reason)


def _named_providers(provider: str) -> list[str]:
    return list(dict.fromkeys(provider.split()))


class AuthorizeService:
    async def authorize(self, database: Database, *, request: AuthorizeRequest) -> Decision:
        """Decide, and hold the estimate when allowed and billable, in a transaction of its own.

        PostgreSQL: one statement; SQLite, and the decisions that statement leaves to
        Python: step by step in ``database.session_scope()``. Counted in
        ``metrics.authorize_decisions``.
        """
        decision = None
        paths = database.by_dialect(sqlite=sqlite_decision_paths, postgresql=postgres_decision_paths)
        if paths.decides_in_one_statement:
            decision = await self._decide_in_one_statement(database, request)
        if decision is None:
            async with _step_by_step_slots(database), database.session_scope() as session:
                decision = await self.decide_step_by_step(session, request=request)
        _decisions_counter(decision.reason or "allowed").inc()
        return decision

    async def _decide_in_one_statement(self, database: Database, request: AuthorizeRequest) -> Decision | None:
        """PostgreSQL: the decision and its hold in one statement, asked again once the payer's period is
        granted when it was not; None when it must go step by step."""
        arguments = statement_arguments(request, utcnow())
        answer = await pg_decision_repository.decide(database.engine, **arguments)
        if answer.outcome == UNGRANTED and answer.payer is not None:
            grant = functools.partial(_grant_in_own_transaction, database)
            if await granted_in_batch(database, account=answer.payer, period=arguments["period"], grant=grant):
                answer = await pg_decision_repository.decide(database.engine, **statement_arguments(request, utcnow()))
        return decision_of(answer)

    async def decide_step_by_step(self, session: AsyncSession, *, request: AuthorizeRequest) -> Decision:
        """The rule of the module docstring in Python, in the caller's transaction."""
        named = _named_providers(request.provider)
        parties = await authorize_repository.load_parties(
            session, user=request.user, bill_to=request.bill_to, provider_ids=named
        )
        user = parties.accounts.get(request.user)
        if user is None:
            await account_service.ensure_users(session, {request.user})
            created = await session.get(Account, request.user)
            if created is None:
                raise RuntimeError(f"account {request.user!r} missing right after ensure_users created it")
            user = Party(
                created.name, created.kind, created.plan, created.seats, created.status, created.spending_limit_nano_usd
            )
            parties.disabled[request.user] = set()
        if user.kind != "user":
            return _refused("unknown_account", None)
        payer = user
        if request.bill_to is not None:
            org = parties.accounts.get(request.bill_to) if request.bill_to != request.user else user
            refusal = bill_to_refusal(user=request.user, org=org, is_member=parties.is_member)
            if refusal is not None:
                return _refused(refusal, None)
            payer = cast(Party, org)  # not None: bill_to_refusal refuses a missing org

        registered = await provider_catalog.get_many(session, named)
        if not registered:
            return _refused("unknown_provider", payer.name)
        disabled = parties.disabled.get(payer.name, set())
        allowed = [pid for pid in named if pid in registered and pid not in disabled]
        if not allowed:
            return _refused("provider_disabled", payer.name)
        if request.custom_key:
            return Decision(allowed=True, billing_account=payer.name, providers=allowed)

        if payer.status == "delinquent":
            return _refused("account_delinquent", payer.name)
        terms = get_settings().plans.get(payer.plan)
        pays_as_you_go = bool(terms and terms.pay_as_you_go)
        # Grants and prepaid credits pay for any provider; read again under the lock when there are some.
        now = utcnow()
        period = period_of(now)
        extra = await credit_grant_service.spendable(session, account_name=payer.name, period=period)
        if not pays_as_you_go and not extra:
            # Without pay-as-you-go only credits can pay, and only credit-eligible providers use plan credits.
            allowed = [pid for pid in allowed if registered[pid].credit_eligible]
        limit = payer.spending_limit_nano_usd if pays_as_you_go else None

        first = allowed[0] if allowed else named[0]
        # Estimated before the lock, so a cache miss is not paid while the row is locked.
        estimate = await estimates_service.estimate_for(session, first, request.model) if allowed else 0
        row = await balances_repository.lock_period_money(session, account=payer.name, period=period)
        due = credits_for(payer)
        if (
            row is None
            or row.credits_granted_nano_usd < due
            or (row.credits_granted_ahead and row.credits_granted_nano_usd != due)
        ):
            # Credits to grant (a ledger posting), a row to create, or a grant made ahead to set to the plan.
            account = await session.get(Account, payer.name)
            if account is None:
                raise RuntimeError(f"account {payer.name!r} missing, though its parties were just read")
            row = PeriodMoney.of(await credits_service.lock_period(session, account=account, period=period))
        if extra:
            extra = await credit_grant_service.spendable(session, account_name=payer.name, period=period)
        figures = figures_of(row, extra)
        credit_eligible = bool(allowed) and registered[first].credit_eligible
        refusal = (
            "credits_exhausted"
            if not allowed
            else money_refusal(
                figures, pays_as_you_go=pays_as_you_go, limit=limit, credit_eligible=credit_eligible, estimate=estimate
            )
        )
        if refusal is not None:
            if refusal == "spending_limit_reached":
                await alerts_service.after_decision(
                    session, account=payer.name, period=period, limit=limit, before=figures, after=figures, refused=True
                )
            return _money_decision(figures, limit, billing_account=payer.name, reason=refusal)
        hold_id = await holds_service.place_hold(
            session,
            account=payer.name,
            period=period,
            user=request.user,
            provider_id=first,
            model=request.model,
            amount_nano_usd=estimate,
            credit_eligible=credit_eligible,
            now=now,
        )
        held = figures.with_hold(estimate, credit_eligible=credit_eligible)
        await alerts_service.after_decision(
            session, account=payer.name, period=period, limit=limit, before=figures, after=held, refused=False
        )
        return _money_decision(held, limit, billing_account=payer.name, providers=allowed, hold_id=hold_id)


async def _grant_in_own_transaction(database: Database, names: list[str], period: str) -> None:
    """A batch of ``metering.hot_path.grant_batches``: ``period`` granted to ``names`` in one transaction."""
    async with database.session_scope() as session:
        accounts = await account_repository.get_many(session, names)
        await credits_service.lock_account_periods(
            session, keys=[(name, period) for name in accounts], accounts=accounts
        )


def statement_arguments(request: AuthorizeRequest, now: datetime) -> DecisionArguments:
    """The arguments of ``pg_decision_repository.decide`` for ``request`` decided at ``now``."""
    settings = get_settings()
    return {
        "user": request.user,
        "bill_to": request.bill_to,
        "provider_ids": _named_providers(request.provider),
        "model": request.model,
        "custom_key": request.custom_key,
        "period": period_of(now),
        "now": now,
        "expires_at": hold_expiry(now, settings.hold_ttl_seconds),
        "plans": settings.plans,
        "alert_limit_percent": settings.alert_spending_limit_percent,
    }


def decision_of(answer: OneStatementDecision) -> Decision | None:
    """The ``Decision`` of the statement's answer (None for ``slow``, ``ungranted`` and ``alert``), figures as the
    step-by-step path gives them."""
    outcome = answer.outcome
    if outcome in _STEP_BY_STEP:
        return None
    if outcome in _PAYERLESS:
        return _refused(outcome, None)
    if outcome == "custom_key":
        return Decision(allowed=True, billing_account=answer.payer, providers=answer.providers or [])
    if (
        answer.granted is None
        or answer.used is None
        or answer.payg is None
        or answer.in_flight is None
        or answer.in_flight_payg_only is None
    ):  # refused before the money was read (the row's columns are None together)
        return _refused(outcome, answer.payer)
    figures = Figures(answer.granted, answer.used, answer.payg, answer.in_flight, answer.in_flight_payg_only)
    if outcome != "allowed":
        return _money_decision(figures, answer.spending_limit, billing_account=answer.payer, reason=outcome)
    return _money_decision(
        figures.with_hold(answer.estimate, credit_eligible=bool(answer.credit_eligible)),
        answer.spending_limit,
        billing_account=answer.payer,
        providers=answer.providers,
        hold_id=answer.hold_id,
    )


def _money_decision(
    figures: Figures,
    limit: int | None,
    *,
    billing_account: str | None,
    reason: str | None = None,
    providers: list[str] | None = None,
    hold_id: str | None = None,
) -> Decision:
    """A decision that read the period's money; ``figures`` count the hold it placed, if any."""
    after = figures
    return Decision(
        allowed=reason is None,
        billing_account=billing_account,
        providers=providers or [],
        reason=reason,
        hold_id=hold_id,
        credits_remaining_nano_usd=after.credits_remaining,
        spending_limit_remaining_nano_usd=after.limit_remaining(limit),
    )


def _refused(reason: str, billing_account: str | None) -> Decision:
    return Decision(allowed=False, billing_account=billing_account, providers=[], reason=reason)


authorize_service = AuthorizeService()
