"""How usage moves money: estimates for new records, and settling priced/quarantined/unpriced ones.

Both entry points are batched (a few statements per batch, not per row) and run inside the
caller's transaction: ingest calls ``account_for_new_usage`` with the rows it just inserted,
cost collection calls ``settle`` with a provider's answer. A request's cost is split
the period's plan credits first (credit-eligible providers only), then grants and prepaid
credits, then pay-as-you-go when the plan has it, else written off
(``metering.charging.split``); it is posted once, keyed ``cost:<usage_record_id>``.

Settling also writes the events its changes cause (``metering.events``), in the same
transaction: the alert thresholds the postings cross, judged on the account-period totals it
holds locked, and the quarantines (authorize writes the spending-limit events its holds cause).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from metering import metrics
from metering.accounts.repository import account_repository
from metering.alerts.rules import figures_of
from metering.alerts.service import alerts_service
from metering.balances.repository import PendingDelta, PeriodTotals, balances_repository
from metering.charging.split import CostSplit, SpendableCredit, split_costs
from metering.config import get_settings
from metering.credit_grants.service import credit_grant_service
from metering.credits.repository import credits_repository
from metering.credits.service import PlanHolder, credits_service
from metering.events.repository import event_repository
from metering.events.service import NewEvent, event_service
from metering.events.types import PROVIDER_QUARANTINE
from metering.holds.estimates import estimates_service
from metering.holds.service import HoldClaim, holds_service
from metering.ledger.service import WrittenPostings, ledger_service
from metering.models import Provider
from metering.money import duration_cost_nano
from metering.periods import current_period, next_period, utcnow
from metering.providers.repository import provider_repository
from metering.usage.accounting_repository import SettledRow, accounting_repository
from metering.usage.repository import ProviderTerms, usage_repository
from metering.usage.types import PricedRequest, QuarantinedRequest, SettleResult

logger = logging.getLogger(__name__)

# ``hold_flag_reason`` of a record that named a hold of another user, billing account or provider.
FOREIGN_HOLD = "hold_of_another_request"


class NewUsage(Protocol):
    """What pricing a new record needs: an ``AcceptedUsage``, or a row ingest has yet to insert."""

    @property
    def provider_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def custom_key(self) -> bool: ...
    @property
    def duration_ms(self) -> int | None: ...
    @property
    def hardware(self) -> str | None: ...


class StoredUsage(NewUsage, Protocol):
    """A stored record accounting reads: an ``AcceptedUsage``, or a row ingest just inserted."""

    @property
    def id(self) -> int: ...
    @property
    def user_name(self) -> str: ...
    @property
    def billing_account(self) -> str: ...
    @property
    def period(self) -> str: ...
    @property
    def hold_id(self) -> str | None: ...
    @property
    def estimate_nano_usd(self) -> int: ...


@dataclass(frozen=True, slots=True)
class NewUsagePricing:
    """The providers of a batch of new records and the estimator's value per (provider, model).

    Read once per batch, before the INSERT, so every row is written with its estimate and
    only the rows a hold attaches to are updated afterwards.
    """

    providers: Mapping[str, Provider | ProviderTerms]
    estimates: dict[tuple[str, str], int]

    @classmethod
    def of_lookup(
        cls,
        providers: Mapping[str, ProviderTerms],
        stored: Mapping[tuple[str, str], tuple[int, int]],
        keys: Iterable[tuple[str, str]],
    ) -> NewUsagePricing:
        """Ingest's pricing from its one look-up: each (provider, model) of ``keys`` gets its stored
        mean when it has samples, else its provider's default (``estimate_for_many``'s rule)."""
        estimates = {}
        for key in keys:
            terms = providers.get(key[0])
            if terms is not None and terms.pricing != "compute_time":
                samples, mean = stored.get(key, (0, 0))
                estimates[key] = mean if samples > 0 else terms.default_estimate_nano_usd
        return cls(providers, estimates)

    def estimate(self, usage: NewUsage) -> int:
        """A record's estimate unless a hold attaches: its compute_time price (0 when it cannot
        be priced), else the estimator's; custom-key records are never estimated."""
        if usage.custom_key:
            return 0
        provider = self.providers[usage.provider_id]
        if provider.pricing == "compute_time":
            return _compute_time_cost(usage, provider)[0]
        return self.estimates.get((usage.provider_id, usage.model), 0)


async def price_new_usage(session: AsyncSession, usages: Sequence[NewUsage]) -> NewUsagePricing:
    billable = [usage for usage in usages if not usage.custom_key]
    providers = await provider_repository.get_many(session, {u.provider_id for u in billable})
    keys = {(u.provider_id, u.model) for u in billable if providers[u.provider_id].pricing != "compute_time"}
    return NewUsagePricing(providers, await estimates_service.estimate_for_many(session, keys))


async def account_for_new_usage(
    session: AsyncSession,
    accepted: Sequence[StoredUsage],
    *,
    pricing: NewUsagePricing | None = None,
    accounts: Mapping[str, PlanHolder] | None = None,
) -> None:
    """Called by ingest in the same transaction as the insert of ``accepted`` (new rows only).

    Each billable record's estimate (its hold's amount when the hold was still held, else
    ``pricing``'s) is added to its period's pending estimate; ``compute_time`` records are
    priced now, or quarantined when they cannot be. Ingest passes the ``pricing`` it inserted
    the rows with and the billing accounts' terms it read; other callers let them be read here.
    """
    billable = [usage for usage in accepted if not usage.custom_key]
    if not billable:
        return
    if pricing is None:
        pricing = await price_new_usage(session, billable)
    if accounts is None:
        accounts = await account_repository.get_many(session, {u.billing_account for u in billable})
    # Holds first (attaching locks the holds' period rows, as the holds service asks).
    # A hold pays into one record's estimate: the first in the batch that names it, if it owns it.
    claims: dict[str, HoldClaim] = {}
    for usage in billable:
        if usage.hold_id and usage.hold_id not in claims:
            claims[usage.hold_id] = HoldClaim(usage.id, usage.user_name, usage.billing_account, usage.provider_id)
    held: dict[int, int] = {}
    if claims:
        attached = await holds_service.attach_holds(session, claims)
        held = {claims[hold_id].usage_record_id: amount for hold_id, amount in attached.amounts.items()}
        await accounting_repository.flag_holds(session, attached.foreign, reason=FOREIGN_HOLD)
    priced: dict[int, int] = {}
    quarantined: dict[int, tuple[str, str]] = {}
    changed: dict[int, int] = {}
    deltas: dict[tuple[str, str], PendingDelta] = defaultdict(PendingDelta)
    # Per provider, not per record: a batch holds thousands of records of a few providers.
    compute_time = {
        provider_id: provider
        for provider_id, provider in pricing.providers.items()
        if provider.pricing == "compute_time"
    }
    payg_only = {provider_id for provider_id, provider in pricing.providers.items() if not provider.credit_eligible}
    estimate_of = pricing.estimate
    for usage in billable:
        usage_id = usage.id
        provider = compute_time.get(usage.provider_id)
        if provider is not None:
            cost, problem = _compute_time_cost(usage, provider)
            if problem is None:
                priced[usage_id] = cost
            else:
                quarantined[usage_id] = problem
        estimate = held[usage_id] if usage_id in held else estimate_of(usage)
        if estimate != usage.estimate_nano_usd:
            changed[usage_id] = estimate
        deltas[(usage.billing_account, usage.period)].add(estimate, payg_only=usage.provider_id in payg_only)
    await accounting_repository.set_estimates(session, changed)
    # The account rows are locked last: concurrent batches of the same accounts wait on these
    # locks until commit, so everything that needs no lock is done before taking them.
    await credits_service.add_pending_estimates(session, deltas=deltas, accounts=accounts)
    if priced or quarantined:
        await settle(
            session,
            priced=[PricedRequest(i, c) for i, c in priced.items()],
            quarantined=[QuarantinedRequest(i, detail) for i, (_, detail) in quarantined.items()],
        )
        for usage in billable:
            if usage.id in priced:
                metrics.requests_priced.labels(usage.provider_id).inc()
            elif usage.id in quarantined:
                metrics.requests_quarantined.labels(usage.provider_id, quarantined[usage.id][0]).inc()


def _compute_time_cost(usage: NewUsage, provider: Provider | ProviderTerms) -> tuple[int, tuple[str, str] | None]:
    """Duration × the hardware's price per second, or (metric label, reason) it cannot be priced.

    A cost over the per-request ceiling is quarantined, as one a provider reports would be.
    """
    if usage.duration_ms is None:
        return 0, ("missing_duration", "compute_time: missing duration_ms")
    if not usage.hardware:
        return 0, ("missing_hardware", "compute_time: missing hardware")
    price = (provider.hardware_prices_nano_usd_per_second or {}).get(usage.hardware)
    if not isinstance(price, int) or isinstance(price, bool) or price < 0:
        return 0, ("unknown_hardware", f"compute_time: unknown hardware {usage.hardware[:64]!r}")
    cost = duration_cost_nano(usage.duration_ms, price)
    ceiling = get_settings().cost_ceiling_nano_usd
    if cost > ceiling:
        return 0, ("over_ceiling", f"compute_time: {cost} nano-USD exceeds the ceiling of {ceiling}")
    return cost, None


async def settle(
    session: AsyncSession,
    *,
    priced: Sequence[PricedRequest] = (),
    quarantined: Sequence[QuarantinedRequest] = (),
    unpriced: Sequence[int] = (),
    lease_owner: str | None = None,
) -> SettleResult:
    """Called by cost collection in the batch's transaction.

    Only records still ``pending`` move (exactly once, whoever else is settling them), and,
    when ``lease_owner`` is given, only those it still leases; the rest are replays, or
    conflicts when already priced at another cost.
    """
    costs: dict[int, int] = {}
    conflicts = replayed = 0
    for request in priced:
        cost = request.cost_nano_usd
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
            # Pricing validates answers before settling; this is the last guard of the ledger.
            raise ValueError(f"cost of usage record {request.usage_record_id} is not a nano-USD int >= 0: {cost!r}")
        earlier = costs.setdefault(request.usage_record_id, request.cost_nano_usd)
        if earlier != request.cost_nano_usd:
            conflicts += 1
    reasons = {q.usage_record_id: q.reason[:256] for q in quarantined if q.usage_record_id not in costs}
    gone = {i: None for i in unpriced if i not in costs and i not in reasons}

    now = utcnow()
    mark = accounting_repository
    moved_priced = await mark.mark_priced(session, costs, now=now, lease_owner=lease_owner) if costs else []
    moved_quarantined = (
        await mark.mark_settled(session, reasons, status="quarantined", lease_owner=lease_owner) if reasons else []
    )
    moved_unpriced = await mark.mark_settled(session, gone, status="unpriced", lease_owner=lease_owner) if gone else []

    moved = {row.id for rows in (moved_priced, moved_quarantined, moved_unpriced) for row in rows}
    not_moved = [i for i in (*costs, *reasons, *gone) if i not in moved]
    states = await accounting_repository.states(session, not_moved) if not_moved else {}
    for record_id in not_moved:
        status, stored_cost, owner = states.get(record_id, (None, None, None))
        if lease_owner is not None and owner != lease_owner:
            continue  # another worker's lease now: neither a replay nor a conflict of this caller
        if record_id in costs and status == "priced" and stored_cost != costs[record_id]:
            conflicts += 1
            logger.warning(
                "usage record %s already priced at %s nano-USD; a different cost of %s was refused",
                record_id,
                stored_cost,
                costs[record_id],
            )
        else:
            replayed += 1

    if moved_priced or moved_quarantined or moved_unpriced:
        await _move_money(session, moved_priced, costs, moved_quarantined + moved_unpriced)
    if moved_quarantined:
        await _emit_quarantines(session, moved_quarantined, reasons)
    if moved_priced:
        # Last, as the estimator asks: after every account row this transaction locks.
        await estimates_service.observe_costs(
            session, [(row.provider_id, row.model, costs[row.id]) for row in moved_priced]
        )
    return SettleResult(
        priced=len(moved_priced),
        replayed=replayed,
        quarantined=len(moved_quarantined),
        unpriced=len(moved_unpriced),
        conflicts=conflicts,
    )


async def _move_money(
    session: AsyncSession, priced_rows: list[SettledRow], costs: dict[int, int], released_rows: list[SettledRow]
) -> None:
    """Post the costs of ``priced_rows`` and release every moved record's pending estimate.

    The account-period totals the split depends on are locked until the transaction ends, and
    every worker settling the same accounts waits for them. So the split is planned from the
    totals read without a lock and its postings written first, in a savepoint; the totals are
    locked after, and the postings kept when the locked totals split the batch the same way
    (nearly always: only credits running out under another worker can change it). Otherwise
    the savepoint is rolled back and the batch planned again.
    """
    # Late costs go to the current period, or the next open one after a forced early close.
    candidates = [current_period()]
    for _ in range(2):
        candidates.append(next_period(candidates[-1]))
    closed = await credits_repository.closed_periods(session, {row.period for row in priced_rows} | set(candidates))
    open_period = next((period for period in candidates if period not in closed), candidates[-1])

    def posting_period(row: SettledRow) -> str:
        return open_period if row.period in closed else row.period

    all_rows = priced_rows + released_rows
    priced_keys = {(row.billing_account, posting_period(row)) for row in priced_rows}
    keys = priced_keys | {(row.billing_account, row.period) for row in all_rows}
    # Plain terms, not ORM accounts: a batch names up to a thousand accounts.
    _, accounts = await usage_repository.lookup(
        session, provider_ids=(), names={row.billing_account for row in all_rows}
    )
    providers = await provider_repository.get_many(session, {row.provider_id for row in all_rows})
    eligible = {provider_id: provider.credit_eligible for provider_id, provider in providers.items()}
    plans = {name: terms.plan for name, terms in accounts.items()}
    payg_plans = {name for name, terms in get_settings().plans.items() if terms.pay_as_you_go}

    def split_from(
        totals: Mapping[tuple[str, str], PeriodTotals], pools: Mapping[str, list[SpendableCredit]] | None = None
    ) -> CostSplit:
        return split_costs(
            priced_rows,
            costs,
            totals,
            eligible=eligible,
            plans=plans,
            payg_plans=payg_plans,
            posting_period=posting_period,
            pools=pools,
        )

    # Accounts with grants or prepaid credits to spend are split under the lock: their grants are
    # locked after the totals, as authorize locks them.
    with_grants = await credit_grant_service.accounts_with_credit(session, {row.billing_account for row in priced_rows})
    planned = None
    for _ in range(_PLANS_BEFORE_LOCKING if priced_rows and not with_grants else 0):
        try:
            planned = await _write_split_then_lock(session, keys=keys, accounts=accounts, split_from=split_from)
            break
        except _SplitChanged:
            continue
        except _CannotPlan:
            break
    pools: dict[str, list[SpendableCredit]] = {}
    spendable_before: dict[tuple[str, str], int] = {}
    if planned is None:
        # Nothing priced, rows or accounts to create, or credits kept changing: lock, then split.
        locked = await credits_service.lock_account_periods(session, keys=keys, accounts=accounts)
        pools = await credit_grant_service.lock_for_settling(session, with_grants)
        spendable_before = _spendable(pools, priced_keys)
        split = split_from(locked, pools)
        written = await ledger_service.write_many(session, split.postings)
    else:
        locked, split, written = planned
    await credit_grant_service.record_spending(session, taken=split.taken_from_grants, accounts=split.grant_accounts)
    before = {key: figures_of(locked[key], spendable_before.get(key, 0)) for key in priced_keys}
    split.apply_to(locked)
    payg_only = {provider_id for provider_id, credit_eligible in eligible.items() if not credit_eligible}
    for row in all_rows:
        state = locked[(row.billing_account, row.period)]
        # Never below zero: a drifted cache must not wedge pricing; verify reports the drift.
        state.pending_estimate_nano_usd = max(0, state.pending_estimate_nano_usd - row.estimate_nano_usd)
        if row.provider_id in payg_only:
            state.pending_payg_only_nano_usd = max(0, state.pending_payg_only_nano_usd - row.estimate_nano_usd)
        state.pending_payg_only_nano_usd = min(state.pending_payg_only_nano_usd, state.pending_estimate_nano_usd)
    await ledger_service.move_balances(session, written)
    await balances_repository.save_totals(session, list(locked.values()))
    # The alerts these postings fire, judged on the totals still locked (once per cause: unique keys).
    await alerts_service.after_postings(
        session, before=before, after={key: locked[key] for key in priced_keys}, extra=_spendable(pools, priced_keys)
    )


def _spendable(
    pools: Mapping[str, list[SpendableCredit]], keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """Per (account, period) of ``keys``: what its locked grants can pay in that period (the rule's X)."""
    return {
        (account, period): sum(grant.remaining_nano_usd for grant in pools[account] if grant.pays_for(period))
        for account, period in keys
        if account in pools
    }


# A quarantine event names at most this many of its requests (and counts them all).
_QUARANTINE_EVENT_REQUESTS = 100


async def _emit_quarantines(session: AsyncSession, rows: list[SettledRow], reasons: Mapping[int, str]) -> None:
    """One ``provider.quarantine`` event per provider, account and period of the records just quarantined.

    A record leaves ``pending`` once, so the lowest record id of a group names its cause.
    """
    groups: dict[tuple[str, str, str], list[SettledRow]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: row.id):
        groups[(row.provider_id, row.billing_account, row.period)].append(row)
    named = [row.id for group in groups.values() for row in group[:_QUARANTINE_EVENT_REQUESTS]]
    request_ids = await event_repository.request_ids(session, named)
    events = []
    for (provider_id, account, period), group in sorted(groups.items()):
        requests = [
            {"request_id": request_ids.get(row.id), "reason": reasons.get(row.id)}
            for row in group[:_QUARANTINE_EVENT_REQUESTS]
        ]
        data = {"provider": provider_id, "count": len(group), "requests": requests}
        key = f"{PROVIDER_QUARANTINE}:{provider_id}:{group[0].id}"
        events.append(NewEvent(PROVIDER_QUARANTINE, account, period, key, data))
    await event_service.emit(session, events)


async def _write_split_then_lock(
    session: AsyncSession,
    *,
    keys: set[tuple[str, str]],
    accounts: Mapping[str, PlanHolder],
    split_from: Callable[[Mapping[tuple[str, str], PeriodTotals]], CostSplit],
) -> tuple[dict[tuple[str, str], PeriodTotals], CostSplit, WrittenPostings]:
    """Split from the totals read without a lock, write the postings, then lock the totals; in a
    savepoint, rolled back unless the locked totals split the batch the same way."""
    seen = await balances_repository.read_totals(session, keys)
    if len(seen) < len(keys):
        raise _CannotPlan  # rows to create (and grant) first: under the lock, as every writer does
    split = split_from(seen)
    async with session.begin_nested():
        written = await ledger_service.write_many(session, split.postings, create_accounts=False)
        if written is None:
            raise _CannotPlan  # accounts to create: under the lock too
        locked = await credits_service.lock_account_periods(session, keys=keys, accounts=accounts)
        if not split.holds_for(locked):
            raise _SplitChanged
    return locked, split, written


# Plans of a batch from unlocked totals before it locks them first. Each plan that fails has
# written the batch's postings in vain (then rolled back), so a second failure, which takes
# another worker settling the same accounts' last credits in between, falls back to the lock.
_PLANS_BEFORE_LOCKING = 2


class _SplitChanged(Exception):
    """The locked totals split the batch otherwise than the unlocked ones it was planned from."""


class _CannotPlan(Exception):
    """The batch needs rows or ledger accounts created, which only happens under the lock."""
