"""Closing a period: each account's pay-as-you-go receivable plus its adjustments becomes an invoice in whole cents.

The invoice total is the period's pay-as-you-go plus the adjustments posted to it (one line per
provider, and one line of adjustments). The sub-cent remainder of the total is carried to the
account's next invoice. A total is never below zero: a total under zero makes no invoice, and
the credit is carried into the next period as a ``carry`` adjustment, which the next invoice
takes. So over any run of periods ``invoiced cents * 10^7 + carried remainder - credit carried
== pay-as-you-go + adjustments``. Each invoice's ``invoice.created`` event is written in the
closing transaction.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from metering.adjustments.repository import OwedUnderPlan
from metering.adjustments.service import adjustment_service
from metering.config import get_settings
from metering.events.service import NewEvent, event_service
from metering.events.types import INVOICE_CREATED
from metering.invoicing.cents import apportion_cents
from metering.invoicing.errors import PeriodNotEnded
from metering.invoicing.repository import ReceivableLine, invoicing_repository
from metering.ledger.repository import ChargeUnderPlan, ledger_repository
from metering.models import Invoice, InvoiceLine, Period
from metering.money import cents_with_remainder
from metering.periods import parse_period, period_bounds, period_of, previous_period, utcnow

log = logging.getLogger(__name__)

# What an ``invoice.created`` event tells of its invoice, besides its id.
_INVOICE_EVENT_FIELDS = (
    "status",
    "amount_cents",
    "payg_nano_usd",
    "carried_in_nano_usd",
    "carried_out_nano_usd",
)


@dataclass(frozen=True)
class CloseResult:
    period: str
    # closed | already_closed | in_grace
    outcome: str
    invoices: int = 0
    nothing_due: int = 0
    amount_cents: int = 0
    payg_nano_usd: int = 0
    # Accounts with a receivable or adjustments that may not be invoiced, and why (an invariant breach).
    refused: dict[str, str] = field(default_factory=dict)
    closes_after: datetime | None = None
    # Earlier months with activity closed first, oldest first (periods close in order).
    earlier: list[CloseResult] = field(default_factory=list)
    # For ``already_closed``: the later closed period that makes this one count as closed.
    closed_by: str | None = None
    # The adjustments of the accounts invoiced or in credit (not refused), and the credit of those whose
    # total was below zero, carried to the next period (a negative sum).
    adjustments_nano_usd: int = 0
    in_credit: int = 0
    credit_carried_nano_usd: int = 0

    def describe(self) -> str:
        if self.outcome == "in_grace":
            return f"period {self.period} not closed: grace window runs until {self.closes_after:%Y-%m-%dT%H:%M:%SZ} (use --force)"
        if self.outcome == "already_closed":
            if self.closed_by:
                return f"period {self.period} counts as closed: the later period {self.closed_by} is closed"
            return f"period {self.period} already closed"
        before = "".join(f"{result.describe()}\n" for result in self.earlier)
        return before + self._describe_closed()

    def _describe_closed(self) -> str:
        text = (
            f"period {self.period} closed: {self.invoices} invoices, {self.amount_cents} cents "
            f"from {self.payg_nano_usd} nano-USD pay-as-you-go; {self.nothing_due} account(s) owing under a cent, "
            "carried to the next period"
        )
        if self.adjustments_nano_usd or self.in_credit:
            text += (
                f"; {self.adjustments_nano_usd} nano-USD of adjustments; {self.in_credit} account(s) in credit, "
                f"{-self.credit_carried_nano_usd} nano-USD carried to the next period"
            )
        if self.refused:
            text += "; REFUSED " + ", ".join(f"{name} ({why})" for name, why in sorted(self.refused.items()))
        return text


@dataclass(frozen=True)
class InvoiceView:
    id: int
    account: str
    period: str
    status: str
    # The invoice's pay-as-you-go; with ``adjustments_nano_usd`` its total before rounding.
    payg_nano_usd: int
    carried_in_nano_usd: int
    amount_cents: int
    carried_out_nano_usd: int
    stripe_invoice_id: str | None
    created_at: datetime
    lines: list[dict[str, Any]]
    adjustments_nano_usd: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The API shape: amounts in nano-USD and in the invoiced cents, RFC 3339 times."""
        return {
            "id": self.id,
            "account": self.account,
            "period": self.period,
            "status": self.status,
            "currency": "usd",
            "amount_cents": self.amount_cents,
            "payg_nano_usd": self.payg_nano_usd,
            "adjustments_nano_usd": self.adjustments_nano_usd,
            "carried_in_nano_usd": self.carried_in_nano_usd,
            "carried_out_nano_usd": self.carried_out_nano_usd,
            "stripe_invoice_id": self.stripe_invoice_id,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "lines": self.lines,
        }


class InvoicingService:
    async def close_period(
        self, session: AsyncSession, *, period: str | None = None, force: bool = False, now: datetime | None = None
    ) -> CloseResult:
        """Close ``period`` (default: the previous one) and invoice it, in this one transaction.

        Outside ``force``, a period closes only once its grace window has passed, so late
        costs still land in it. Periods close in order: every earlier month with activity
        that is still open is closed (and invoiced) first, and a month earlier than a closed
        one counts as closed already. Closing twice is a no-op. Atomic: a crash leaves it open.
        """
        now = now or utcnow()
        period = parse_period(period) if period else previous_period(period_of(now))
        _, end = period_bounds(period)
        if now < end:
            raise PeriodNotEnded(
                f"period {period} is still open: it ends at {end:%Y-%m-%dT%H:%M:%SZ}; only an ended period can be closed",
                period=period,
            )
        closes_after = end + timedelta(hours=get_settings().period_grace_hours)
        if not force and now < closes_after:
            return CloseResult(period, "in_grace", closes_after=closes_after)

        row = await invoicing_repository.lock_period(session, period)
        if row.status == "closed":
            return CloseResult(period, "already_closed")
        later = await invoicing_repository.latest_closed_after(session, period)
        if later is not None:
            return CloseResult(period, "already_closed", closed_by=later)
        earlier = []
        for before in await invoicing_repository.open_periods_before(session, period):
            earlier.append(
                await self._close_and_invoice(session, await invoicing_repository.lock_period(session, before), now)
            )
        result = await self._close_and_invoice(session, row, now)
        return replace(result, earlier=earlier)

    async def _close_and_invoice(self, session: AsyncSession, row: Period, now: datetime) -> CloseResult:
        row.status, row.closed_at = "closed", now
        await session.flush()
        return await self._invoice_period(session, period=row.period, now=now)

    async def _invoice_period(self, session: AsyncSession, *, period: str, now: datetime) -> CloseResult:
        by_account: dict[str, list[ReceivableLine]] = defaultdict(list)
        for line in await invoicing_repository.receivable_lines(session, period):
            by_account[line.account_name].append(line)
        cached = await invoicing_repository.receivable_balances(session, period)
        owed = {name: sum(line.amount_nano_usd for line in lines) for name, lines in by_account.items()}
        owed = {name: amount for name, amount in owed.items() if amount > 0}
        for name, amount in owed.items():
            if cached.get(name) != amount:
                log.warning(
                    "receivable cache of %s for %s is %s, entries sum to %s; invoicing the entries",
                    name,
                    period,
                    cached.get(name),
                    amount,
                )
        adjusted = await adjustment_service.ledger_balances(session, period=period)

        names = sorted(set(owed) | set(adjusted))
        plans = await invoicing_repository.plans_of(session, names)
        payg_plans = [name for name, terms in get_settings().plans.items() if terms.pay_as_you_go]
        charged_without_payg = await ledger_repository.charges_under_plans_without_payg(
            session, payg_plans, period=period
        )
        adjusted_without_payg = await adjustment_service.owed_under_plans_without_payg(
            session, payg_plans, period=period
        )
        refused = self._refusals(names, plans, charged_without_payg, adjusted_without_payg)
        names = [name for name in names if name not in refused]
        totals = {name: owed.get(name, 0) + adjusted.get(name, 0) for name in names}
        # An invoice is never below zero (nor zero: nothing to bill); the credit goes to the next period.
        in_credit = {name: total for name, total in totals.items() if total < 0}
        invoiced = [name for name in names if totals[name] > 0]
        carried = await invoicing_repository.carried_in(session, invoiced, period)
        adjustment_requests = await adjustment_service.request_counts(session, period=period)

        invoice_rows, lines_by_account = [], {}
        total_cents = nothing_due = 0
        for name in invoiced:
            carried_in = carried.get(name, 0)
            cents, carried_out = cents_with_remainder(totals[name], carried_in)
            lines = sorted(
                by_account.get(name, []), key=lambda line: (line.provider_id is not None, line.provider_id or "")
            )
            if adjusted.get(name):
                # The adjustments' line names no provider (``InvoiceLine.provider_id`` NULL), after the usage lines.
                lines.append(ReceivableLine(name, None, adjusted[name], adjustment_requests.get(name, 0)))
            line_cents = apportion_cents([line.amount_nano_usd for line in lines], cents)
            lines_by_account[name] = list(zip(lines, line_cents, strict=True))
            total_cents += cents
            nothing_due += cents == 0
            invoice_rows.append(
                {
                    "account_name": name,
                    "period": period,
                    # The total before rounding: the column's CHECK holds cents and remainders to it.
                    "payg_nano_usd": totals[name],
                    "carried_in_nano_usd": carried_in,
                    "amount_cents": cents,
                    "carried_out_nano_usd": carried_out,
                    "status": "pending" if cents else "nothing_due",
                    "created_at": now,
                    "updated_at": now,
                }
            )
        ids = await invoicing_repository.insert_invoices(session, invoice_rows)
        line_rows = [
            {
                "invoice_id": ids[name],
                "provider_id": line.provider_id,
                "requests_count": line.requests_count,
                "amount_nano_usd": line.amount_nano_usd,
                "amount_cents": cents,
                "stripe_status": "pending" if cents else "skipped",
            }
            for name in invoiced
            for line, cents in lines_by_account[name]
        ]
        await invoicing_repository.insert_lines(session, line_rows)
        for name, credit in in_credit.items():
            await adjustment_service.carry(
                session, account_name=name, from_period=period, amount_nano_usd=credit, now=now
            )
        await event_service.emit(
            session,
            [
                NewEvent(
                    INVOICE_CREATED,
                    name,
                    period,
                    f"{INVOICE_CREATED}:{ids[name]}",
                    {
                        "invoice_id": ids[name],
                        **{field: row[field] for field in _INVOICE_EVENT_FIELDS},
                        "payg_nano_usd": owed.get(name, 0),
                        "adjustments_nano_usd": adjusted.get(name, 0),
                    },
                )
                for name, row in zip(invoiced, invoice_rows, strict=True)
            ],
            now=now,
        )
        for name, why in refused.items():
            log.error(
                "not invoicing %s for %s: %s (receivable %s nano-USD, adjustments %s nano-USD)",
                name,
                period,
                why,
                owed.get(name, 0),
                adjusted.get(name, 0),
            )
        return CloseResult(
            period,
            "closed",
            invoices=len(invoiced) - nothing_due,
            nothing_due=nothing_due,
            amount_cents=total_cents,
            payg_nano_usd=sum(owed.get(name, 0) for name in names),
            refused=refused,
            adjustments_nano_usd=sum(adjusted.get(name, 0) for name in names),
            in_credit=len(in_credit),
            credit_carried_nano_usd=sum(in_credit.values()),
        )

    @staticmethod
    def _refusals(
        names: list[str],
        plans: dict[str, str],
        charged_without_payg: list[ChargeUnderPlan],
        adjusted_without_payg: list[OwedUnderPlan],
    ) -> dict[str, str]:
        """Accounts that must not be invoiced. A charge is owed under the plan it was posted on, so
        an account downgraded to free pays what it ran up before. A plan without pay-as-you-go never
        charges any by construction (its overage is written off), nor takes an adjustment (refused
        when asked): such a charge is a breach to report, not to bill."""
        refused: dict[str, str] = {}
        for owed in adjusted_without_payg:
            if owed.account_name in names:
                refused[owed.account_name] = (
                    f"adjusted by {owed.amount_nano_usd} nano-USD on plan {owed.plan!r}, which has no pay-as-you-go"
                )
        for charge in charged_without_payg:
            if charge.account_name in names:
                refused[charge.account_name] = (
                    f"charged {charge.amount_nano_usd} nano-USD on plan {charge.plan!r}, which has no pay-as-you-go"
                )
        for name in names:
            if name not in plans:
                refused[name] = "no such account"
        return refused

    async def list_invoices(self, session: AsyncSession, *, account: str) -> list[InvoiceView]:
        """An account's invoices, newest period first, with their lines."""
        invoices = await invoicing_repository.invoices_of(session, account)
        lines = await invoicing_repository.lines_of(session, [invoice.id for invoice in invoices])
        return [_view(invoice, lines[invoice.id]) for invoice in invoices]

    async def line_request_ids(self, session: AsyncSession, *, line_id: int) -> list[str]:
        """Request ids behind a line: its provider's cost postings, or for the adjustments' line (no provider)
        the requests its adjustments name."""
        line, invoice = await invoicing_repository.line_with_invoice(session, line_id)
        if line.provider_id is None:
            return await adjustment_service.request_ids(
                session, account_name=invoice.account_name, period=invoice.period
            )
        return await invoicing_repository.line_request_ids(session, line_id)


def _view(invoice: Invoice, lines: list[InvoiceLine]) -> InvoiceView:
    adjustments = sum(line.amount_nano_usd for line in lines if line.provider_id is None)
    return InvoiceView(
        id=invoice.id,
        account=invoice.account_name,
        period=invoice.period,
        status=invoice.status,
        # The column holds the total (pay-as-you-go + adjustments): see ``Invoice.payg_nano_usd``.
        payg_nano_usd=invoice.payg_nano_usd - adjustments,
        adjustments_nano_usd=adjustments,
        carried_in_nano_usd=invoice.carried_in_nano_usd,
        amount_cents=invoice.amount_cents,
        carried_out_nano_usd=invoice.carried_out_nano_usd,
        stripe_invoice_id=invoice.stripe_invoice_id,
        created_at=invoice.created_at,
        lines=[
            {
                "id": line.id,
                "provider": line.provider_id,
                "kind": "usage" if line.provider_id is not None else "adjustments",
                "requests": line.requests_count,
                "amount_nano_usd": line.amount_nano_usd,
                "amount_cents": line.amount_cents,
                "stripe_status": line.stripe_status,
                "stripe_invoice_item_id": line.stripe_invoice_item_id,
            }
            for line in lines
        ],
    )


invoicing_service = InvoicingService()
