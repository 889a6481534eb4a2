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

Round trips of an allowed decision on PostgreSQL: parties (user, org, membership,
disabled providers), lock, hold (INSERT and ``held`` UPDATE in one statement),
commit; providers and estimates come from short in-process caches
(``metering.authorize.catalog``, ``metering.holds.estimates``). The commit does not
wait for the WAL flush: see ``authorize_repository.lock_period_row``.

The money rule. With the locked row's G = credits granted, U = credits used,
P = pay-as-you-go charged, F = in flight = pending estimates + holds, L = the
spending limit (None = no cap), and e = the estimate of (first allowed provider,
model):

    credits_remaining = max(0, G − U − F)
    payg_committed    = P + max(0, U + F − G)      (in-flight cost credits cannot cover)
    payg_part(e)      = e − min(e, credits_remaining)  for a credit-eligible provider, else e
    draws_payg        = not credit-eligible  or  credits_remaining == 0  or  e > credits_remaining

- no pay-as-you-go (free): only credit-eligible providers are offered; allowed iff
  not ``draws_payg`` (the estimate fits the remaining credits), else ``credits_exhausted``;
- pay-as-you-go: allowed iff not ``draws_payg``, or L is None, or
  (payg_committed + payg_part(e) ≤ L and payg_committed < L), else ``spending_limit_reached``.

Allowed → a hold of e (``held += e``) in the same transaction; the figures returned
are credits_remaining and max(0, L − payg_committed) recomputed after it.
In-flight amounts are not split by credit eligibility (one ``held`` total), so while
credits remain an in-flight request to a non-eligible provider is counted as if
credits could cover it: the limit can be passed by at most that in-flight amount,
on top of estimate error.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from metering import metrics
from metering.accounts.service import account_service, bill_to_refusal
from metering.authorize.catalog import provider_catalog
from metering.authorize.repository import Party, PeriodMoney, authorize_repository
from metering.config import get_settings
from metering.credits.service import credits_for, credits_service
from metering.holds.estimates import estimates_service
from metering.holds.service import holds_service
from metering.models import Account
from metering.periods import period_of, utcnow


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


@dataclass(frozen=True, slots=True)
class Figures:
    """The money of one account period as the rule above reads it."""

    granted: int
    used: int
    payg: int
    in_flight: int

    @classmethod
    def of(cls, row: PeriodMoney) -> "Figures":
        return cls(
            granted=row.credits_granted_nano_usd,
            used=row.credits_used_nano_usd,
            payg=row.payg_nano_usd,
            in_flight=row.pending_estimate_nano_usd + row.held_nano_usd,
        )

    @property
    def credits_remaining(self) -> int:
        return max(0, self.granted - self.used - self.in_flight)

    @property
    def payg_committed(self) -> int:
        return self.payg + max(0, self.used + self.in_flight - self.granted)

    def limit_remaining(self, limit: int | None) -> int | None:
        return None if limit is None else max(0, limit - self.payg_committed)


def money_refusal(
    figures: Figures, *, pays_as_you_go: bool, limit: int | None, credit_eligible: bool, estimate: int
) -> str | None:
    """The reason a billable request with ``estimate`` is refused, or None: the rule of the module docstring."""
    remaining = figures.credits_remaining
    draws_payg = not credit_eligible or remaining == 0 or estimate > remaining
    if not draws_payg:
        return None
    if not pays_as_you_go:
        return "credits_exhausted"
    if limit is None:
        return None
    payg_part = estimate if not credit_eligible else estimate - min(estimate, remaining)
    committed = figures.payg_committed
    if committed + payg_part <= limit and committed < limit:
        return None
    return "spending_limit_reached"


def _named_providers(provider: str) -> list[str]:
    return list(dict.fromkeys(provider.split()))


class AuthorizeService:
    async def authorize(self, session: AsyncSession, *, request: AuthorizeRequest) -> Decision:
        """Decide, and hold the estimate when allowed and billable; counted in ``metrics.authorize_decisions``."""
        decision = await self._decide(session, request)
        metrics.authorize_decisions.labels(reason=decision.reason or "allowed").inc()
        return decision

    async def _decide(self, session: AsyncSession, request: AuthorizeRequest) -> Decision:
        named = _named_providers(request.provider)
        parties = await authorize_repository.load_parties(
            session, user=request.user, bill_to=request.bill_to, provider_ids=named
        )
        user = parties.accounts.get(request.user)
        if user is None:
            await account_service.ensure_users(session, {request.user})
            created = await session.get(Account, request.user)
            user = Party(created.name, created.kind, created.plan, created.seats, created.status, created.spending_limit_nano_usd)
            parties.disabled[request.user] = set()
        if user.kind != "user":
            return _refused("unknown_account", None)
        payer = user
        if request.bill_to is not None:
            org = parties.accounts.get(request.bill_to) if request.bill_to != request.user else user
            refusal = bill_to_refusal(user=request.user, org=org, is_member=parties.is_member)
            if refusal is not None:
                return _refused(refusal, None)
            payer = org

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
        if not pays_as_you_go:
            # Without pay-as-you-go only credits can pay, and only credit-eligible providers use them.
            allowed = [pid for pid in allowed if registered[pid].credit_eligible]
        limit = payer.spending_limit_nano_usd if pays_as_you_go else None

        first = allowed[0] if allowed else named[0]
        # Estimated before the lock, so a cache miss is not paid while the row is locked.
        estimate = await estimates_service.estimate_for(session, first, request.model) if allowed else 0
        now = utcnow()
        period = period_of(now)
        row = await authorize_repository.lock_period_row(session, account=payer.name, period=period)
        if row is None or row.credits_granted_nano_usd < credits_for(payer):
            # Credits to grant (a ledger posting) or a row to create: the slow path, fully durable.
            await authorize_repository.restore_durability(session)
            account = await session.get(Account, payer.name)
            row = PeriodMoney.of(await credits_service.lock_period(session, account=account, period=period))
        figures = Figures.of(row)
        refusal = "credits_exhausted" if not allowed else money_refusal(
            figures,
            pays_as_you_go=pays_as_you_go,
            limit=limit,
            credit_eligible=registered[first].credit_eligible,
            estimate=estimate,
        )
        if refusal is not None:
            return Decision(
                allowed=False,
                billing_account=payer.name,
                providers=[],
                reason=refusal,
                credits_remaining_nano_usd=figures.credits_remaining,
                spending_limit_remaining_nano_usd=figures.limit_remaining(limit),
            )
        hold_id = await holds_service.place_hold(
            session, account=payer.name, period=period, user=request.user, provider_id=first, model=request.model,
            amount_nano_usd=estimate, now=now,
        )
        after = Figures(figures.granted, figures.used, figures.payg, figures.in_flight + estimate)
        return Decision(
            allowed=True,
            billing_account=payer.name,
            providers=allowed,
            hold_id=hold_id,
            credits_remaining_nano_usd=after.credits_remaining,
            spending_limit_remaining_nano_usd=after.limit_remaining(limit),
        )


def _refused(reason: str, billing_account: str | None) -> Decision:
    return Decision(allowed=False, billing_account=billing_account, providers=[], reason=reason)


authorize_service = AuthorizeService()
