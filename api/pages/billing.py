"""What the billing page shows, gathered in one transaction from the services behind the JSON API.

The summary is ``GET /v1/accounts/{name}/billing``'s, the chart is the daily per-member
series of ``GET /v1/accounts/{name}/usage`` over the period, the invoices are
``GET /v1/accounts/{name}/invoices``'s: the page and the API cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from api.pages.chart import UsageChart, build_chart
from metering.alerts.service import Banner, alerts_service
from metering.analytics.service import BillingSummary, analytics_service
from metering.auth.policy import Action, access_policy
from metering.auth.tokens import Principal
from metering.credit_grants.service import CreditGrantView, credit_grant_service
from metering.errors import Forbidden
from metering.invoicing.service import InvoiceView, invoicing_service
from metering.models import Account
from metering.periods import next_period, period_bounds, previous_period

PERMILLE = 1_000


@dataclass(frozen=True)
class LimitGauge:
    """Pay-as-you-go charged against the spending limit, in per-mille of the limit (capped at 1000)."""

    spent_nano_usd: int
    limit_nano_usd: int
    permille: int

    @property
    def reached(self) -> bool:
        return self.spent_nano_usd >= self.limit_nano_usd

    @property
    def percent_label(self) -> str:
        return f"{self.permille // 10}.{self.permille % 10}%"


# The page lists at most this many grants; the API lists them all.
_GRANTS_SHOWN = 50


@dataclass(frozen=True)
class BillingPage:
    viewer: str
    summary: BillingSummary
    previous_period: str
    next_period: str
    limit: LimitGauge | None
    # None when the caller may read the billing summary but not this part (e.g. finance and usage).
    chart: UsageChart | None
    invoices: list[InvoiceView] | None
    # The latest alert that still holds (limit reached, credits used up, delinquent), shown on top.
    alert: Banner | None = None
    # Credit grants and prepaid credits, newest first (None when the caller may not read them).
    grants: list[CreditGrantView] | None = None

    @property
    def in_flight_nano_usd(self) -> int:
        return self.summary.pending_estimate_nano_usd + self.summary.held_nano_usd


def limit_gauge(summary: BillingSummary) -> LimitGauge | None:
    limit = summary.spending_limit_nano_usd
    if limit is None:
        return None
    spent = summary.payg_nano_usd
    # A zero limit allows no pay-as-you-go at all: it is reached from the start.
    permille = PERMILLE if limit == 0 else min(spent * PERMILLE // limit, PERMILLE)
    return LimitGauge(spent_nano_usd=spent, limit_nano_usd=limit, permille=permille)


async def _may(session: AsyncSession, principal: Principal, account: Account, action: Action) -> bool:
    """Whether a caller already allowed to read the account's billing may also do ``action``."""
    try:
        await access_policy.authorize_account(session, principal=principal, account_name=account.name, action=action)
    except Forbidden:
        return False
    return True


async def gather_billing_page(
    session: AsyncSession, *, principal: Principal, account_name: str, period: str | None
) -> BillingPage:
    """The page of ``account_name`` for ``period`` (default the current one), refused as the API refuses."""
    account = await access_policy.authorize_account(
        session, principal=principal, account_name=account_name, action=Action.READ_BILLING
    )
    summary = await analytics_service.get_billing_summary(session, account=account, period=period)
    chart = None
    if await _may(session, principal, account, Action.READ_USAGE):
        start, end = period_bounds(summary.period)
        series = await analytics_service.get_usage_series(
            session, account=account, start=start, end=end, interval="day", group_by="member"
        )
        chart = build_chart(series)
    invoices = None
    if await _may(session, principal, account, Action.READ_INVOICES):
        invoices = await invoicing_service.list_invoices(session, account=account.name)
    grants = None
    if await _may(session, principal, account, Action.READ_CREDIT_GRANTS):
        grants = await credit_grant_service.list_grants(session, account_name=account.name, limit=_GRANTS_SHOWN)
    return BillingPage(
        viewer=principal.user,
        summary=summary,
        previous_period=previous_period(summary.period),
        next_period=next_period(summary.period),
        limit=limit_gauge(summary),
        chart=chart,
        invoices=invoices,
        alert=await alerts_service.banner(session, account=account, period=summary.period),
        grants=grants,
    )
