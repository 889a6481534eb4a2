"""``metering verify``: the ledger's invariants, checked against the database as it is (SPEC §7).

A breach is money that does not add up; a warning is something finance should see that is
allowed (a spending limit passed by costs in flight when it was reached, or arriving late).

``verify`` is an own-transaction entry point (a command, not a route): it opens one read
transaction, so every check sees the same snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from metering.adjustments.repository import adjustment_repository
from metering.analytics.rollups import rollup_mismatches
from metering.config import get_settings
from metering.credit_grants.repository import credit_grant_repository
from metering.db import Database
from metering.ledger import codes
from metering.ledger.repository import ledger_repository
from metering.ledger.verify_repository import LIMIT, verify_repository
from metering.money import format_usd

CACHE_FIELDS = (
    "credits_granted_nano_usd",
    "credits_used_nano_usd",
    "payg_nano_usd",
    "written_off_nano_usd",
    "pending_estimate_nano_usd",
    "held_nano_usd",
    "pending_payg_only_nano_usd",
    "held_payg_only_nano_usd",
)


@dataclass
class Check:
    name: str
    description: str
    breaches: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Exact counts; the lists hold at most LIMIT lines each.
    breach_count: int = 0
    warning_count: int = 0

    def breach(self, line: str) -> None:
        self.breach_count += 1
        if len(self.breaches) < LIMIT:
            self.breaches.append(line)

    def warn(self, line: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < LIMIT:
            self.warnings.append(line)

    @property
    def ok(self) -> bool:
        return self.breach_count == 0


@dataclass
class VerifyReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def breach_count(self) -> int:
        return sum(check.breach_count for check in self.checks)

    @property
    def warning_count(self) -> int:
        return sum(check.warning_count for check in self.checks)

    def check(self, name: str) -> Check:
        return next(check for check in self.checks if check.name == name)


async def verify(database: Database) -> VerifyReport:
    """Run every check in one read transaction (a consistent snapshot on PostgreSQL)."""
    async with database.session_scope() as session:
        return await verify_session(session)


async def verify_session(session: AsyncSession) -> VerifyReport:
    return VerifyReport(
        [
            await _balanced(session),
            await _balances(session),
            await _priced_once(session),
            await _free_not_invoiced(session),
            await _period_caches(session),
            await _spending_limits(session),
            await _usage_rollups(session),
            await _credit_grants(session),
            await _adjustments(session),
        ]
    )


async def _balanced(session: AsyncSession) -> Check:
    check = Check("balanced", "every transaction sums to zero")
    for key, total in await verify_repository.unbalanced_transactions(session):
        check.breach(f"transaction {key} sums to {total} nano-USD")
    return check


async def _balances(session: AsyncSession) -> Check:
    check = Check("balances", "each ledger account's cached balance equals the sum of its entries")
    for code, cached, summed in await verify_repository.balance_mismatches(session):
        check.breach(f"{code}: cached {cached}, entries sum to {summed} (off by {cached - summed})")
    return check


async def _priced_once(session: AsyncSession) -> Check:
    check = Check("priced_once", "each priced request has exactly one cost transaction, for its cost")
    for provider, request_id, records in await verify_repository.duplicate_requests(session):
        check.breach(f"request {request_id!r} of {provider} is stored {records} times")
    for record_id in await verify_repository.priced_without_cost_transaction(session):
        check.breach(f"usage record {record_id} is priced but has no cost transaction")
    for record_id, status in await verify_repository.cost_transactions_of_unpriced(session):
        check.breach(f"usage record {record_id} is {status} but has a cost transaction")
    for record_id, cost, owed in await verify_repository.cost_mismatches(session):
        check.breach(f"usage record {record_id} costs {cost} but its transaction owes the provider {owed}")
    return check


async def _free_not_invoiced(session: AsyncSession) -> Check:
    """A charge is judged by the plan it was posted under: pay-as-you-go run up before a downgrade
    to free is still owed (and invoiced), but none may be charged while on a plan without it."""
    check = Check("free_not_invoiced", "no pay-as-you-go charged while an account's plan had none")
    payg_plans = [name for name, terms in get_settings().plans.items() if terms.pay_as_you_go]
    for charge in await ledger_repository.charges_under_plans_without_payg(session, payg_plans):
        check.breach(
            f"{charge.account_name} ({charge.code}) was charged {format_usd(charge.amount_nano_usd)} "
            f"on plan {charge.plan!r}, which has no pay-as-you-go"
        )
    return check


async def _period_caches(session: AsyncSession) -> Check:
    check = Check("period_caches", "account_periods totals equal their sums (ledger, pending requests, holds)")
    ledger = await verify_repository.ledger_sums_by_account_period(session)
    pending = await verify_repository.pending_estimates(session)
    held = await verify_repository.held_amounts(session)
    seen: set[tuple[str, str]] = set()
    for row in await verify_repository.account_periods(session):
        key = (row.account_name, row.period)
        seen.add(key)
        expected = {name: 0 for name in CACHE_FIELDS}
        expected.update(ledger.get(key, {}))
        expected["pending_estimate_nano_usd"], expected["pending_payg_only_nano_usd"] = pending.get(key, (0, 0))
        expected["held_nano_usd"], expected["held_payg_only_nano_usd"] = held.get(key, (0, 0))
        for name in CACHE_FIELDS:
            cached = getattr(row, name)
            if cached != expected[name]:
                check.breach(f"{row.account_name} {row.period} {name}: cached {cached}, sum {expected[name]}")
    for key in sorted(set(ledger) | set(pending) | set(held)):
        if key not in seen:
            check.breach(f"{key[0]} {key[1]} has postings, pending requests or holds but no account_periods row")
    return check


async def _spending_limits(session: AsyncSession) -> Check:
    """Posting never waits for a limit (the provider already served the request), so a period may
    pass its cap, but only by what authorize could not know when it admitted the requests: the
    estimate error of authorized requests (cost above the estimate it counted, whenever they
    started), requests without a hold that were already in flight when the cap was reached,
    charges made or admitted before the limit was set, and late costs of closed periods. Those are warnings;
    anything beyond them, or a charge for a request without a hold started after the cap was
    reached (nobody admitted it), means too much got through: a breach.
    """
    check = Check("spending_limits", "no period's pay-as-you-go over its spending limit, except by estimate error")
    for account, period, payg, limit in await verify_repository.over_limit(session):
        postings = await verify_repository.payg_postings(session, account=account, period=period)
        # A limit lowered below what was already charged is "reached" when it was set.
        set_at = await verify_repository.limit_set_at(session, account)
        running, reached_at, after_start, allowance = 0, None, [], 0
        for posting in postings:
            late = posting.kind == codes.LATE_REQUEST_COST
            if late:
                check.warn(
                    f"{account} {period}: late cost of {posting.original_period} charged {format_usd(posting.amount_nano_usd)}"
                )
                allowance += posting.amount_nano_usd
            elif (
                not posting.authorized
                and reached_at is not None
                and posting.started_at is not None
                and posting.started_at > reached_at
            ):
                after_start.append(posting.amount_nano_usd)
            elif set_at is not None and (
                posting.posted_at <= set_at or (posting.held_at is not None and posting.held_at <= set_at)
            ):
                # Charged, or admitted, before the limit was set: no limit could have refused it.
                allowance += posting.amount_nano_usd
            else:
                allowance += posting.estimate_error
            running += posting.amount_nano_usd
            if reached_at is None and running >= limit:
                reached_at = max(posting.posted_at, set_at) if set_at is not None else posting.posted_at
        over = f"{account} {period}: pay-as-you-go {format_usd(payg)} over its limit {format_usd(limit)}"
        if after_start:
            check.breach(
                f"{over}; {len(after_start)} request(s) without a hold started after the limit was reached were charged "
                f"{format_usd(sum(after_start))}"
            )
        elif payg - limit > allowance:
            check.breach(
                f"{over} by {format_usd(payg - limit)} ({payg - limit} nano-USD), more than the "
                f"{allowance} nano-USD of estimate error and late costs that could pass it"
            )
        else:
            check.warn(f"{over} by {format_usd(payg - limit)}, within the estimate error of the requests in flight")
    return check


async def _credit_grants(session: AsyncSession) -> Check:
    """What is left of grants and prepaid credits is what their ledger accounts hold, and what authorize
    reads of them (``credit_balances``) is their sum."""
    check = Check(
        "credit_grants", "grants' remaining amounts equal their ledger accounts and the balances authorize reads"
    )
    remaining = await credit_grant_repository.remaining_by_account(session)
    ledger = await verify_repository.extra_credit_balances(session)
    for key in sorted(set(remaining) | set(ledger)):
        if remaining.get(key, 0) != ledger.get(key, 0):
            check.breach(
                f"{key[0]} {key[1]}: grants hold {remaining.get(key, 0)} nano-USD, their ledger accounts {ledger.get(key, 0)}"
            )
    cached = await credit_grant_repository.balances(session)
    summed: dict[str, int] = {}
    for (account, _), amount in remaining.items():
        summed[account] = summed.get(account, 0) + amount
    for account in sorted(set(cached) | set(summed)):
        if cached.get(account, 0) != summed.get(account, 0):
            check.breach(
                f"{account}: credit balance cached {cached.get(account, 0)}, grants sum to {summed.get(account, 0)}"
            )
    return check


async def _adjustments(session: AsyncSession) -> Check:
    """Each period's adjustment ledger account holds the adjustments posted to it, less the credit carried
    out of it; and none is owed while the account's plan had no pay-as-you-go (it would be invoiced)."""
    check = Check("adjustments", "adjustments equal their ledger accounts; none owed on a plan without pay-as-you-go")
    rows = await adjustment_repository.sums_by_account_period(session)
    ledger = await adjustment_repository.all_ledger_balances(session)
    for account, period in sorted(set(rows) | set(ledger)):
        if rows.get((account, period), 0) != ledger.get((account, period), 0):
            check.breach(
                f"{account} {period}: adjustments sum to {rows.get((account, period), 0)} nano-USD, "
                f"their ledger account holds {ledger.get((account, period), 0)}"
            )
    payg_plans = [name for name, terms in get_settings().plans.items() if terms.pay_as_you_go]
    for owed in await adjustment_repository.owed_under_plans_without_payg(session, payg_plans):
        check.breach(
            f"{owed.account_name} {owed.period}: {owed.idempotency_key} owes {format_usd(owed.amount_nano_usd)} "
            f"on plan {owed.plan!r}, which has no pay-as-you-go"
        )
    return check


async def _usage_rollups(session: AsyncSession) -> Check:
    """The usage series reads these totals: a difference would show usage that never was."""
    check = Check("usage_rollups", "the hourly and daily usage totals equal the usage records (PostgreSQL)")
    for m in await rollup_mismatches(session):
        check.breach(
            f"{m.billing_account} {m.span} {m.starts_at:%Y-%m-%d %H:00} {m.dimension} {m.key}: "
            f"records (requests, priced, cost, pending, custom key) {m.records}, totals {m.totals}"
        )
    return check
