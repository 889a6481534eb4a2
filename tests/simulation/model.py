"""A reference model of SPEC §3–§7: what the billing service must answer and hold, in plain Python.

The contract written as code, independently of the service (nothing here imports it):
accounts, plans and credits; the authorize money rule and its holds; usage records and
their statuses; settling a cost into credits, pay-as-you-go or a write-off; periods that
close in order, with late adjustments; invoices in whole cents with the remainder carried;
Stripe's delinquency. Money is ``int`` nano-USD. Time is the caller's ``now`` (UTC): the
model never reads a clock.

Estimates. The spec estimates a request from recent actual costs of (provider, model), else
from the provider's default. The model knows exactly two states of that: no cost observed
yet (the default), or every observed cost equal to one value (that value, which any mean of
equal costs is). Scenarios keep each (provider, model)'s cost constant so that this is the
whole truth, and ``ScenarioOutOfModel`` is raised when one does not.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

NANO_PER_USD = 1_000_000_000
NANO_PER_CENT = 10_000_000

# Configuration defaults the spec names (§5.1, §5.2, §6).
HOLD_TTL = timedelta(minutes=15)
MAX_FUTURE_SKEW = timedelta(hours=24)
MAX_RECORD_AGE = timedelta(days=35)
PENDING_MAX_AGE = timedelta(days=7)
CLOSE_GRACE = timedelta(hours=48)
COST_CEILING_NANO_USD = 100 * NANO_PER_USD


# Known divergences of the service from the spec. A simulation may switch one on to have the model
# follow the service where they part, so that one known difference does not hide every later one;
# ``BillingModel.diverged`` counts each time the switch changed what the model did.
ENDED_PERIOD_TOP_UP = (
    "a month that has ended but is not closed is topped up to today's plan and seats when money moves in it "
    "(a late record), though its credits were granted once and expired at its end (SPEC §3)"
)


class ScenarioOutOfModel(Exception):
    """The scenario asked something the model cannot answer exactly (e.g. a varying cost)."""


@dataclass(frozen=True)
class Plan:
    kind: str
    credits_nano_usd: int
    per_seat: bool
    pay_as_you_go: bool


PLANS: Mapping[str, Plan] = {
    "free": Plan("user", 100_000_000, per_seat=False, pay_as_you_go=False),
    "pro": Plan("user", 2 * NANO_PER_USD, per_seat=False, pay_as_you_go=True),
    "team": Plan("org", 2 * NANO_PER_USD, per_seat=True, pay_as_you_go=True),
    "enterprise": Plan("org", 2 * NANO_PER_USD, per_seat=True, pay_as_you_go=True),
}
# The plans an org may be billed on through X-HF-Bill-To (§3).
BILL_TO_PLANS = frozenset({"team", "enterprise"})


# --- periods (§2) -----------------------------------------------------------------------------


def period_of(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def period_start(period: str) -> datetime:
    year, month = (int(part) for part in period.split("-"))
    return datetime(year, month, 1, tzinfo=UTC)


def period_end(period: str) -> datetime:
    start = period_start(period)
    return datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)


def previous_period(period: str) -> str:
    return period_of(period_start(period) - timedelta(days=1))


# --- the world's fixed parts ------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    id: str
    credit_eligible: bool
    pricing: str  # "cost_endpoint" | "compute_time"
    default_estimate_nano_usd: int
    hardware_prices_nano_usd_per_second: Mapping[str, int] = field(default_factory=dict)

    def compute_time_cost(self, duration_ms: int | None, hardware: str | None) -> int | None:
        """duration × the hardware's price per second (§4); None when it cannot be priced."""
        price = self.hardware_prices_nano_usd_per_second.get(hardware or "")
        if duration_ms is None or price is None:
            return None
        cost, remainder = divmod(duration_ms * price, 1000)
        if remainder:
            raise ScenarioOutOfModel(
                f"{duration_ms} ms at {price}/s is not a whole nano-USD; the spec names no rounding"
            )
        return cost


@dataclass
class Account:
    name: str
    kind: str
    plan: str
    seats: int = 1
    status: str = "active"
    spending_limit_nano_usd: int | None = None
    disabled_providers: set[str] = field(default_factory=set)
    # Orgs: user → role.
    members: dict[str, str] = field(default_factory=dict)
    # Credit finance granted (§3, §8), in the order given.
    grants: list[Grant] = field(default_factory=list)

    @property
    def terms(self) -> Plan:
        return PLANS[self.plan]

    def credits_due(self) -> int:
        """The credits the plan and seats entitle the account to per period (§3)."""
        terms = self.terms
        return terms.credits_nano_usd * (self.seats if terms.per_seat else 1)


@dataclass
class Grant:
    """Credit granted by finance: pays after the period's plan credits, before pay-as-you-go, for any
    billable request of a period up to ``expires`` (None: never expires), soonest expiry first."""

    key: int
    amount: int
    expires: str | None
    remaining: int
    # Prepaid credits bought through Stripe (§3) are one too: they never expire.
    prepaid: bool = False

    def pays_in(self, period: str) -> bool:
        return self.remaining > 0 and (self.expires is None or period <= self.expires)

    def order(self) -> tuple[bool, str, int]:
        return (self.expires is None, self.expires or "", self.key)


@dataclass
class PeriodMoney:
    """One account's money in one period: what the ledger holds for it."""

    granted: int | None = None  # None: nothing granted for this period
    used: int = 0
    payg: int = 0
    written_off: int = 0
    # For the overshoot bound: the pay-as-you-go already committed whenever the limit or the
    # plan changed, and the cost that arrived beyond what authorize held for it.
    limit_floor: int = 0
    estimate_error: int = 0
    # Pay-as-you-go posted for requests no hold of this period stood for (no authorize, an
    # expired hold, a late cost of a closed period): authorize never counted them.
    unheld_payg: int = 0


@dataclass
class Hold:
    key: int
    account: str
    user: str
    provider: str
    model: str
    period: str
    amount: int
    created_at: datetime
    status: str = "held"  # held | attached | expired


@dataclass(frozen=True)
class UsageInput:
    """One usage record as the hook sends it (§5.2); ``hold_key`` names a model hold."""

    request_id: str
    provider: str
    user: str
    bill_to: str | None
    model: str
    started_at: datetime
    custom_key: bool = False
    duration_ms: int | None = None
    hardware: str | None = None
    hold_key: int | None = None


@dataclass
class Record:
    sent: UsageInput
    billing_account: str
    bill_to_flagged: bool
    period: str
    received_at: datetime
    status: str  # pending | priced | custom_key | unpriced | quarantined
    estimate: int = 0
    cost: int | None = None
    # The period its cost was posted to: its own, or the open one as a late adjustment.
    posted_period: str | None = None
    # The hold this record released, if any.
    hold_key: int | None = None
    # True: it named a hold still held that is not its own (flagged, the hold left alone);
    # None: it named a hold no longer held, about which the spec says nothing.
    hold_flagged: bool | None = False

    @property
    def key(self) -> tuple[str, str]:
        return self.sent.provider, self.sent.request_id


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str | None
    billing_account: str | None
    providers: tuple[str, ...] = ()
    hold_key: int | None = None
    credits_remaining_nano_usd: int | None = None
    spending_limit_remaining_nano_usd: int | None = None


@dataclass
class Invoice:
    account: str
    period: str
    payg_nano_usd: int
    carried_in_nano_usd: int
    amount_cents: int
    carried_out_nano_usd: int
    # Set by Stripe's events: payment_failed | paid.
    payment: str | None = None


@dataclass(frozen=True)
class Figures:
    """The money rule's inputs for one account period (§5.1): G, U, P, Fc, Fn, and X, the account's
    granted credit that pays in the period (§3)."""

    granted: int
    used: int
    payg: int
    in_flight_eligible: int
    in_flight_other: int
    grants: int = 0

    @property
    def _plan_left(self) -> int:
        return max(0, self.granted - self.used)

    @property
    def _plan_free(self) -> int:
        """Plan credits neither used nor counted for credit-eligible requests in flight."""
        return max(0, self._plan_left - self.in_flight_eligible)

    @property
    def _grants_free(self) -> int:
        """Granted credit not counted for what is in flight beyond the plan's credits."""
        spill = max(0, self.in_flight_eligible - self._plan_left)
        return max(0, self.grants - spill - self.in_flight_other)

    @property
    def credits_remaining(self) -> int:
        return self._plan_free + self._grants_free

    @property
    def payg_committed(self) -> int:
        spill = max(0, self.in_flight_eligible - self._plan_left)
        return self.payg + max(0, spill + self.in_flight_other - self.grants)

    def credit_for(self, *, credit_eligible: bool) -> int:
        """Credit a request to a provider of that eligibility may still use."""
        return (self._plan_free if credit_eligible else 0) + self._grants_free

    def payg_part(self, estimate: int, *, credit_eligible: bool) -> int:
        rest = estimate - min(estimate, self._plan_free) if credit_eligible else estimate
        return rest - min(rest, self._grants_free)

    def with_hold(self, estimate: int, *, credit_eligible: bool) -> Figures:
        if credit_eligible:
            return Figures(
                self.granted,
                self.used,
                self.payg,
                self.in_flight_eligible + estimate,
                self.in_flight_other,
                self.grants,
            )
        return Figures(
            self.granted, self.used, self.payg, self.in_flight_eligible, self.in_flight_other + estimate, self.grants
        )

    def limit_remaining(self, limit: int | None) -> int | None:
        return None if limit is None else max(0, limit - self.payg_committed)


def money_refusal(
    figures: Figures, *, pays_as_you_go: bool, limit: int | None, credit_eligible: bool, estimate: int
) -> str | None:
    """Why a billable request of ``estimate`` is refused, or None (§5.1)."""
    if estimate <= 0:
        # With e = 0, "payg_part == 0" and "fits the credits" part ways; the spec does not say which.
        raise ScenarioOutOfModel("an estimate of 0")
    part = figures.payg_part(estimate, credit_eligible=credit_eligible)
    if not pays_as_you_go:
        fits = part == 0 and figures.credit_for(credit_eligible=credit_eligible) > 0
        return None if fits else "credits_exhausted"
    if part == 0 or limit is None:
        return None
    committed = figures.payg_committed
    if committed < limit and committed + part <= limit:
        return None
    return "spending_limit_reached"


class BillingModel:
    """The whole state the spec defines, moved by the events the service receives."""

    def __init__(self, providers: Iterable[Provider], *, follow_service_in: Iterable[str] = ()) -> None:
        self.follow_service_in = frozenset(follow_service_in)
        self.diverged: dict[str, int] = {}
        self.providers = {provider.id: provider for provider in providers}
        self.accounts: dict[str, Account] = {}
        self.money: dict[tuple[str, str], PeriodMoney] = {}
        self.holds: dict[int, Hold] = {}
        self.records: dict[tuple[str, str], Record] = {}
        # What each cost endpoint answers for a request: ("cost", value) or ("bad", kind);
        # absent: the ID is missing from its answers.
        self.answers: dict[tuple[str, str], tuple[str, object]] = {}
        self.observed: dict[tuple[str, str], int] = {}
        self.closed_through: str | None = None
        self.invoices: list[Invoice] = []
        # Finance's adjustments (§8) per (account, period posted to), carried credit included.
        self.adjustments: dict[tuple[str, str], int] = {}
        self._hold_keys = itertools.count(1)
        self._grant_keys = itertools.count(1)
        self.payments: set[str] = set()

    # --- periods ------------------------------------------------------------------------------

    def is_closed(self, period: str) -> bool:
        """Closed, or earlier than a closed period (§6: periods close in order)."""
        return self.closed_through is not None and period <= self.closed_through

    def periods(self) -> set[str]:
        return (
            {period for _, period in self.money}
            | {hold.period for hold in self.holds.values()}
            | {record.period for record in self.records.values()}
        )

    # --- accounts (§3, §5.3, §8) ---------------------------------------------------------------

    def sync_account(self, name: str, *, kind: str, plan: str, seats: int) -> bool:
        """The platform's PUT of an account; False when refused (a plan or name of the other kind)."""
        if PLANS[plan].kind != kind:
            return False
        account = self.accounts.get(name)
        if account is None:
            self.accounts[name] = Account(name, kind, plan, seats)
            return True
        if account.kind != kind:
            return False
        self._mark_limit_floors(name)
        account.plan, account.seats = plan, seats
        return True

    def ensure_user(self, name: str) -> None:
        """A user never seen before is created on the free plan."""
        if name not in self.accounts:
            self.accounts[name] = Account(name, "user", "free")

    def put_member(self, org: str, user: str, role: str) -> bool:
        account = self.accounts.get(org)
        if account is None or account.kind != "org":
            return False
        self.ensure_user(user)
        if self.accounts[user].kind != "user":
            return False
        account.members[user] = role
        return True

    def remove_member(self, org: str, user: str) -> bool:
        account = self.accounts.get(org)
        if account is None or account.kind != "org" or user not in account.members:
            return False
        del account.members[user]
        return True

    def set_spending_limit(self, name: str, limit: int | None, *, actor: str) -> bool:
        """An org admin for the org, a pay-as-you-go user for themselves (§3); False when refused."""
        account = self.accounts.get(name)
        if account is None:
            return False
        if account.kind == "org":
            permitted = account.members.get(actor) == "admin"
        else:
            permitted = actor == name and account.terms.pay_as_you_go
        if not permitted:
            return False
        self._mark_limit_floors(name)
        account.spending_limit_nano_usd = limit
        return True

    def set_disabled_providers(self, org: str, providers: Iterable[str], *, actor: str) -> bool:
        account = self.accounts.get(org)
        wanted = set(providers)
        if account is None or account.kind != "org" or account.members.get(actor) != "admin":
            return False
        if not wanted <= self.providers.keys():
            return False
        account.disabled_providers = wanted
        return True

    # --- credits (§3) --------------------------------------------------------------------------

    def _money(self, account: str, period: str) -> PeriodMoney:
        return self.money.setdefault((account, period), PeriodMoney())

    def _touch(self, account: str, period: str, now: datetime) -> PeriodMoney:
        """Money moving in an account period: credits are granted once for a period not closed,
        and topped up to a higher entitlement (more seats, a better plan) while it is the current one."""
        money = self._money(account, period)
        if self.is_closed(period):
            return money
        due = self.accounts[account].credits_due()
        if money.granted is None:
            money.granted = due
        elif due > money.granted:
            if period == period_of(now):
                money.granted = due
            elif ENDED_PERIOD_TOP_UP in self.follow_service_in:
                self.diverged[ENDED_PERIOD_TOP_UP] = self.diverged.get(ENDED_PERIOD_TOP_UP, 0) + 1
                money.granted = due
        return money

    def grant_credits(self, now: datetime) -> None:
        """The grant job: every account's credits for the current period."""
        for name in sorted(self.accounts):
            self._touch(name, period_of(now), now)
            for grant in self.accounts[name].grants:
                if grant.expires is not None and grant.expires < period_of(now):
                    grant.remaining = 0  # what is left expires (§3)

    # --- in flight ---------------------------------------------------------------------------

    def in_flight(self, account: str, period: str) -> tuple[int, int]:
        """(credit-eligible, other) amounts held or pending in an account period."""
        eligible = other = 0
        for hold in self.holds.values():
            if hold.status == "held" and (hold.account, hold.period) == (account, period):
                if self.providers[hold.provider].credit_eligible:
                    eligible += hold.amount
                else:
                    other += hold.amount
        for record in self.records.values():
            if record.status == "pending" and (record.billing_account, record.period) == (account, period):
                if self.providers[record.sent.provider].credit_eligible:
                    eligible += record.estimate
                else:
                    other += record.estimate
        return eligible, other

    def figures(self, account: str, period: str) -> Figures:
        money = self.money.get((account, period)) or PeriodMoney()
        eligible, other = self.in_flight(account, period)
        return Figures(money.granted or 0, money.used, money.payg, eligible, other, self.grants_in(account, period))

    def grants_in(self, account: str, period: str) -> int:
        """What the account's grants can still pay in ``period``."""
        return sum(grant.remaining for grant in self.accounts[account].grants if grant.pays_in(period))

    def adjust(self, account: str, amount: int, corrects: str, now: datetime) -> str | None:
        """Finance adjusts an account's bill (§8): the period it is posted to, shown on the next invoice made
        for the account (the corrected one while it is open, else the one after the last closed); None
        when refused (unknown account, a plan that is never invoiced, a period to come)."""
        account_terms = self.accounts.get(account)
        if account_terms is None or not account_terms.terms.pay_as_you_go or corrects > period_of(now):
            return None
        posted = corrects
        if self.closed_through is not None and corrects <= self.closed_through:
            posted = period_of(period_end(self.closed_through))
        self.adjustments[(account, posted)] = self.adjustments.get((account, posted), 0) + amount
        return posted

    def top_up(self, payment: str, account: str, amount: int) -> bool:
        """Stripe says a top-up's payment succeeded: its amount is prepaid credit, once per payment (§3, §8).
        False for a payment already credited, or an account that does not exist."""
        if account not in self.accounts or payment in self.payments:
            return False
        self.payments.add(payment)
        self.accounts[account].grants.append(Grant(next(self._grant_keys), amount, None, amount, prepaid=True))
        return True

    def grant(self, account: str, amount: int, expires: str | None, now: datetime) -> bool:
        """Finance grants credit (§8); False when refused (unknown account, an expiry already past)."""
        if account not in self.accounts or (expires is not None and expires < period_of(now)):
            return False
        self.accounts[account].grants.append(Grant(next(self._grant_keys), amount, expires, amount))
        return True

    def _mark_limit_floors(self, name: str) -> None:
        """What was already committed when the limit or plan changed: a lower limit cannot undo it."""
        for (account, period), money in self.money.items():
            if account == name:
                money.limit_floor = max(money.limit_floor, self.figures(account, period).payg_committed)

    # --- estimates -----------------------------------------------------------------------------

    def estimate(self, provider: str, model: str) -> int:
        return self.observed.get((provider, model), self.providers[provider].default_estimate_nano_usd)

    def _observe(self, provider: str, model: str, cost: int) -> None:
        known = self.observed.get((provider, model))
        if known is not None and known != cost:
            raise ScenarioOutOfModel(f"{provider} {model} cost {cost} after {known}: the estimate is a mean now")
        self.observed[(provider, model)] = cost

    # --- authorize (§5.1) -------------------------------------------------------------------------

    def authorize(
        self, *, user: str, bill_to: str | None, provider: str, model: str, custom_key: bool, now: datetime
    ) -> Decision:
        self.ensure_user(user)
        if self.accounts[user].kind != "user":
            return Decision(False, "unknown_account", None)
        payer = self.accounts[user]
        if bill_to is not None:
            org = self.accounts.get(bill_to)
            if org is None:
                return Decision(False, "unknown_account", None)
            if org.kind != "org" or org.plan not in BILL_TO_PLANS:
                return Decision(False, "bill_to_not_eligible", None)
            if user not in org.members:
                return Decision(False, "not_a_member", None)
            payer = org
        named = list(dict.fromkeys(provider.split()))
        registered = [pid for pid in named if pid in self.providers]
        if not registered:
            return Decision(False, "unknown_provider", payer.name)
        allowed = [pid for pid in registered if pid not in payer.disabled_providers]
        if not allowed:
            return Decision(False, "provider_disabled", payer.name)
        if custom_key:
            return Decision(True, None, payer.name, tuple(allowed))
        if payer.status == "delinquent":
            return Decision(False, "account_delinquent", payer.name)
        terms = payer.terms
        if not terms.pay_as_you_go and not self.grants_in(payer.name, period_of(now)):
            allowed = [pid for pid in allowed if self.providers[pid].credit_eligible]
        limit = payer.spending_limit_nano_usd if terms.pay_as_you_go else None
        period = period_of(now)
        self._touch(payer.name, period, now)
        figures = self.figures(payer.name, period)
        if not allowed:
            return self._money_decision(figures, limit, payer.name, reason="credits_exhausted")
        first = allowed[0]
        eligible = self.providers[first].credit_eligible
        estimate = self.estimate(first, model)
        reason = money_refusal(
            figures, pays_as_you_go=terms.pay_as_you_go, limit=limit, credit_eligible=eligible, estimate=estimate
        )
        if reason is not None:
            return self._money_decision(figures, limit, payer.name, reason=reason)
        hold = Hold(next(self._hold_keys), payer.name, user, first, model, period, estimate, now)
        self.holds[hold.key] = hold
        after = figures.with_hold(estimate, credit_eligible=eligible)
        return Decision(
            True, None, payer.name, tuple(allowed), hold.key, after.credits_remaining, after.limit_remaining(limit)
        )

    @staticmethod
    def _money_decision(figures: Figures, limit: int | None, payer: str, *, reason: str) -> Decision:
        return Decision(False, reason, payer, (), None, figures.credits_remaining, figures.limit_remaining(limit))

    # --- usage (§5.2) ----------------------------------------------------------------------------

    def ingest(self, sent: UsageInput, *, now: datetime) -> tuple[str, str]:
        """One record: ("accepted" | "duplicate" | "rejected", why)."""
        if sent.started_at > now + MAX_FUTURE_SKEW:
            return "rejected", "started_at more than 24 h in the future"
        if sent.started_at < now - MAX_RECORD_AGE:
            return "rejected", "started_at older than the maximum record age"
        if sent.provider not in self.providers:
            return "rejected", "unknown provider"
        known_user = self.accounts.get(sent.user)
        if known_user is not None and known_user.kind != "user":
            return "rejected", "user is an org"
        existing = self.records.get((sent.provider, sent.request_id))
        if existing is not None:
            return ("duplicate", "same record") if existing.sent == sent else ("rejected", "conflict")
        self.ensure_user(sent.user)
        payer, flagged = sent.user, False
        if sent.bill_to is not None:
            org = self.accounts.get(sent.bill_to)
            if org is not None and org.kind == "org" and org.plan in BILL_TO_PLANS and sent.user in org.members:
                payer = sent.bill_to
            else:
                flagged = True
        period = period_of(sent.started_at)
        record = Record(sent, payer, flagged, period, now, "custom_key" if sent.custom_key else "pending")
        self.records[record.key] = record
        if sent.custom_key:
            record.hold_flagged = None if sent.hold_key is not None else False
            return "accepted", "custom key: recorded, never charged"
        self._touch(payer, period, now)
        self._attach_hold(record)
        provider = self.providers[sent.provider]
        if record.hold_key is None:
            record.estimate = self.estimate(provider.id, sent.model) if provider.pricing == "cost_endpoint" else 0
        if provider.pricing == "compute_time":
            cost = provider.compute_time_cost(sent.duration_ms, sent.hardware)
            if cost is None:
                self._release(record, "quarantined", now)
            else:
                self._settle(record, cost, now)
        return "accepted", "stored"

    def _attach_hold(self, record: Record) -> None:
        """A record releases the hold it names when it is of the hold's user, billing account and provider."""
        key = record.sent.hold_key
        if key is None:
            return
        hold = self.holds.get(key)
        if hold is None or hold.status != "held":
            record.hold_flagged = None
            return
        if (hold.user, hold.account, hold.provider) != (record.sent.user, record.billing_account, record.sent.provider):
            record.hold_flagged = True
            return
        hold.status = "attached"
        record.hold_key = key
        record.estimate = hold.amount

    # --- settling (§3, §6) -----------------------------------------------------------------------

    def _settle(self, record: Record, cost: int, now: datetime) -> None:
        """A cost: credits first (credit-eligible providers), then grants, then pay-as-you-go, else written off;
        posted to the open period, naming its own, when the record's period is closed."""
        account = record.billing_account
        self._touch(account, record.period, now)
        posting_period = period_of(now) if self.is_closed(record.period) else record.period
        money = self._touch(account, posting_period, now)
        from_credits = 0
        if self.providers[record.sent.provider].credit_eligible:
            from_credits = min(cost, max(0, (money.granted or 0) - money.used))
        rest = cost - from_credits
        money.used += from_credits
        for grant in sorted(self.accounts[account].grants, key=Grant.order):
            if rest and grant.pays_in(record.period):
                taken = min(rest, grant.remaining)
                grant.remaining -= taken
                rest -= taken
        if self.accounts[account].terms.pay_as_you_go:
            money.payg += rest
        else:
            money.written_off += rest
        record.status, record.cost, record.posted_period = "priced", cost, posting_period
        self._observe(record.sent.provider, record.sent.model, cost)
        hold = self.holds[record.hold_key] if record.hold_key is not None else None
        held = hold.amount if hold is not None and hold.period == posting_period else 0
        money.estimate_error += max(0, cost - held)
        if self.accounts[account].terms.pay_as_you_go and held == 0:
            money.unheld_payg += rest

    def _release(self, record: Record, status: str, now: datetime) -> None:
        """A record that will never be charged (quarantined, unpriced): its estimate leaves the period."""
        self._touch(record.billing_account, record.period, now)
        record.status = status

    def collect_costs(self, now: datetime) -> None:
        """One pass of cost collection over every pending request of a cost-endpoint provider."""
        for record in list(self.records.values()):
            if record.status != "pending" or self.providers[record.sent.provider].pricing != "cost_endpoint":
                continue
            answer = self.answers.get(record.key)
            if answer is None:
                if record.received_at < now - PENDING_MAX_AGE:
                    self._release(record, "unpriced", now)
                continue
            kind, value = answer
            if kind == "cost" and type(value) is int and 0 <= value <= COST_CEILING_NANO_USD:
                self._settle(record, value, now)
            else:
                self._release(record, "quarantined", now)

    def expire_holds(self, now: datetime) -> None:
        for hold in self.holds.values():
            if hold.status == "held" and hold.created_at + HOLD_TTL < now:
                hold.status = "expired"

    # --- periods and invoices (§6, §7) ---------------------------------------------------------------

    def close_period(self, period: str, *, force: bool, now: datetime) -> list[Invoice]:
        """Close ``period`` and every earlier one; an invoice per account that owes pay-as-you-go.

        Pay-as-you-go is only ever charged while a plan has it (§3: a free plan's overage is written
        off), so what an account owes is invoiced even after a downgrade to free."""
        end = period_end(period)
        if now < end or (not force and now < end + CLOSE_GRACE) or self.is_closed(period):
            return []
        created: list[Invoice] = []
        while True:
            active = {p for _, p in self.money} | {p for _, p in self.adjustments}
            open_ones = sorted(p for p in active if p <= period and not self.is_closed(p))
            if not open_ones:
                break
            closing = open_ones[0]
            for name in sorted(
                {a for a, p in self.money if p == closing} | {a for a, p in self.adjustments if p == closing}
            ):
                payg = self.money[(name, closing)].payg if (name, closing) in self.money else 0
                # The invoice total is pay-as-you-go plus adjustments, never below zero: a credit the total
                # cannot take is carried to the next period's invoice.
                total = payg + self.adjustments.get((name, closing), 0)
                if total < 0:
                    after = period_of(period_end(closing))
                    self.adjustments[(name, after)] = self.adjustments.get((name, after), 0) + total
                if total <= 0:
                    continue
                carried = self.last_invoice(name).carried_out_nano_usd if self.last_invoice(name) else 0
                cents, remainder = divmod(total + carried, NANO_PER_CENT)
                invoice = Invoice(name, closing, payg, carried, cents, remainder)
                self.invoices.append(invoice)
                created.append(invoice)
            self.closed_through = closing
        self.closed_through = period
        return created

    def last_invoice(self, account: str) -> Invoice | None:
        mine = [invoice for invoice in self.invoices if invoice.account == account]
        return max(mine, key=lambda invoice: invoice.period) if mine else None

    def stripe_event(self, invoice: Invoice, kind: str) -> None:
        """invoice.payment_failed makes the account delinquent; invoice.paid clears that failure."""
        account = self.accounts[invoice.account]
        invoice.payment = "payment_failed" if kind == "invoice.payment_failed" else "paid"
        failed = any(i.payment == "payment_failed" for i in self.invoices if i.account == account.name)
        account.status = "delinquent" if failed else "active"

    # --- what the service shows (§8) ---------------------------------------------------------------

    def billing(self, name: str, period: str, now: datetime) -> dict[str, object]:
        """``GET /v1/accounts/{name}/billing?period=``'s fields."""
        account = self.accounts[name]
        money = self.money.get((name, period)) or PeriodMoney()
        if money.granted is not None:
            granted = money.granted
        else:
            # Nothing granted yet: the current period shows what its grant will be.
            granted = account.credits_due() if period >= period_of(now) and not self.is_closed(period) else 0
        held = sum(
            hold.amount
            for hold in self.holds.values()
            if hold.status == "held" and (hold.account, hold.period) == (name, period)
        )
        pending = [
            record
            for record in self.records.values()
            if record.status == "pending" and (record.billing_account, record.period) == (name, period)
        ]
        return {
            "account": name,
            "kind": account.kind,
            "plan": account.plan,
            "seats": account.seats,
            "period": period,
            "status": account.status,
            "credits_granted_nano_usd": granted,
            "credits_used_nano_usd": money.used,
            "credits_remaining_nano_usd": max(granted - money.used, 0),
            "payg_nano_usd": money.payg,
            "written_off_nano_usd": money.written_off,
            "spending_limit_nano_usd": account.spending_limit_nano_usd,
            "disabled_providers": sorted(account.disabled_providers),
            "pending_requests": len(pending),
            "pending_estimate_nano_usd": sum(record.estimate for record in pending),
            "held_nano_usd": held,
            "credit_grants_remaining_nano_usd": sum(
                grant.remaining for grant in account.grants if not grant.prepaid and grant.pays_in(period_of(now))
            ),
            "prepaid_balance_nano_usd": sum(grant.remaining for grant in account.grants if grant.prepaid),
            "adjustments_nano_usd": self.adjustments.get((name, period), 0),
        }

    def requests_of(self, name: str) -> dict[tuple[str, str], dict[str, object]]:
        """The request log of an account (what it is billed for), by (provider, request id)."""
        return {
            record.key: {
                "status": record.status,
                "cost_nano_usd": record.cost,
                "user": record.sent.user,
                "model": record.sent.model,
                "custom_key": record.sent.custom_key,
            }
            for record in self.records.values()
            if record.billing_account == name
        }

    def invoices_of(self, name: str) -> list[dict[str, object]]:
        return [
            {
                "period": invoice.period,
                "payg_nano_usd": invoice.payg_nano_usd,
                "carried_in_nano_usd": invoice.carried_in_nano_usd,
                "amount_cents": invoice.amount_cents,
                "carried_out_nano_usd": invoice.carried_out_nano_usd,
            }
            for invoice in sorted(self.invoices, key=lambda invoice: invoice.period)
            if invoice.account == name
        ]

    def limit_overshoots(self) -> list[str]:
        """Periods whose pay-as-you-go passed the spending limit by more than estimate error allows (§5.1):
        the limit (or what was committed when it or the plan last changed) plus every cost's excess over
        the hold that stood for it."""
        found = []
        for (name, period), money in sorted(self.money.items()):
            account = self.accounts[name]
            limit = account.spending_limit_nano_usd
            if limit is None or not account.terms.pay_as_you_go:
                continue
            bound = max(limit, money.limit_floor) + money.estimate_error
            if money.payg > bound:
                found.append(f"{name} {period}: pay-as-you-go {money.payg} over the bound {bound} (limit {limit})")
        return found
