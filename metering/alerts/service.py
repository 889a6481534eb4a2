"""Alert thresholds per account (audited like the other billing settings), the alert events a posting
of costs fires, and the billing page's banner.

Alerts are judged where the money they watch changes, in that change's transaction: when costs
post (``metering.usage.accounting`` calls ``after_postings`` with the account-period totals it
holds locked), and, for the spending limit, when authorize holds an estimate or refuses for the
limit (``after_decision``, with the period row locked). On PostgreSQL the one-statement decision
leaves to the step-by-step path exactly the decisions that write an event
(``metering.hot_path.pg_decision``), so the hot path writes nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.alerts.errors import InvalidAlertThresholds
from metering.alerts.repository import alert_repository
from metering.alerts.rules import AlertTerms, decision_events, figures_of, may_fire, posting_events
from metering.balances.repository import PeriodTotals, balances_repository
from metering.charging.rule import Figures
from metering.config import MAX_ALERT_THRESHOLDS, get_settings
from metering.errors import AccountNotFound
from metering.events.repository import event_repository
from metering.events.service import event_service
from metering.events.types import ACCOUNT_DELINQUENT, CREDITS_EXHAUSTED, SPENDING_LIMIT_REACHED
from metering.limits.repository import limit_repository
from metering.models import Account, AlertSettings
from metering.periods import utcnow

ALERTS_ACTION = "alerts.set"
_NO_EVENT = 2**63


@dataclass(frozen=True, slots=True)
class Thresholds:
    account: str
    credits_percent: list[int]
    spending_limit_percent: list[int]


@dataclass(frozen=True, slots=True)
class Banner:
    """The latest alert of an account that still holds, for the billing page."""

    type: str
    message: str
    since: datetime | None


def _checked(kind: str, values: Sequence[int]) -> list[int]:
    if len(values) > MAX_ALERT_THRESHOLDS:
        raise InvalidAlertThresholds(f"{kind}: at most {MAX_ALERT_THRESHOLDS} thresholds, got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise InvalidAlertThresholds(f"{kind}: {value!r} is not a whole percentage from 1 to 100")
    return sorted(set(values))


class AlertService:
    async def get_thresholds(self, session: AsyncSession, *, account_name: str) -> Thresholds:
        """The account's thresholds, or the configured defaults when it chose none."""
        stored = await alert_repository.get(session, account_name)
        settings = get_settings()
        if stored is None:
            return Thresholds(account_name, settings.alert_credits_percent, settings.alert_spending_limit_percent)
        return Thresholds(account_name, list(stored.credits_percent), list(stored.spending_limit_percent))

    async def set_thresholds(
        self,
        session: AsyncSession,
        *,
        account_name: str,
        credits_percent: Sequence[int],
        spending_limit_percent: Sequence[int],
        actor: str,
    ) -> Thresholds:
        """Replace both lists (an empty list turns that kind off); a change writes an audit row."""
        credits = _checked("credits_percent", credits_percent)
        limit = _checked("spending_limit_percent", spending_limit_percent)
        # Locked, so concurrent changes audit consistent before/after values.
        account = await account_repository.lock(session, account_name)
        if account is None:
            raise AccountNotFound(f"no account named {account_name!r}", account=account_name)
        before = await self.get_thresholds(session, account_name=account_name)
        after = Thresholds(account_name, credits, limit)
        if (before.credits_percent, before.spending_limit_percent) == (credits, limit):
            return after
        now = utcnow()
        stored = await alert_repository.get(session, account_name)
        if stored is None:
            alert_repository.add(
                session,
                AlertSettings(
                    account_name=account_name, credits_percent=credits, spending_limit_percent=limit, updated_at=now
                ),
            )
        else:
            stored.credits_percent, stored.spending_limit_percent, stored.updated_at = credits, limit, now
        account.updated_at = now
        limit_repository.add_audit_event(
            session,
            account=account_name,
            actor=actor,
            action=ALERTS_ACTION,
            before=_json(before),
            after=_json(after),
            now=now,
        )
        await session.flush()
        return after

    async def after_postings(
        self,
        session: AsyncSession,
        *,
        before: Mapping[tuple[str, str], Figures],
        after: Mapping[tuple[str, str], PeriodTotals],
        extra: Mapping[tuple[str, str], int] | None = None,
    ) -> int:
        """Write the alert events of the account periods whose costs just posted; returns how many were new.

        ``before``: each (account, period)'s figures when its totals were locked; ``after``:
        the same totals once the postings and released estimates are applied; ``extra``: what
        the account's grants can pay in the period after the postings (none when missing).
        """
        extra = extra or {}
        changed = {key: (figures, figures_of(after[key], extra.get(key, 0))) for key, figures in before.items()}
        candidates = {key: pair for key, pair in changed.items() if may_fire(*pair)}
        if not candidates:
            return 0
        settings = get_settings()
        stored = await alert_repository.terms(session, {account for account, _ in candidates})
        events = []
        for (account, period), (figures, now_figures) in candidates.items():
            limit, credits_percent, limit_percent = stored.get(account, (None, None, None))
            terms = AlertTerms(
                spending_limit_nano_usd=limit,
                credits_percent=tuple(settings.alert_credits_percent if credits_percent is None else credits_percent),
                spending_limit_percent=tuple(
                    settings.alert_spending_limit_percent if limit_percent is None else limit_percent
                ),
            )
            events.extend(posting_events(account, period, before=figures, after=now_figures, terms=terms))
        return await event_service.emit(session, events)

    async def after_decision(
        self,
        session: AsyncSession,
        *,
        account: str,
        period: str,
        limit: int | None,
        before: Figures,
        after: Figures,
        refused: bool,
    ) -> int:
        """Write the spending-limit events of one decision on ``account``'s locked period row
        (``rules.decision_events``); returns how many were new. Reads the account's thresholds
        only when a whole percent of the limit was crossed, or the decision was refused."""
        if limit is None or limit <= 0:
            return 0
        was, now = before.payg_committed * 100 // limit, after.payg_committed * 100 // limit
        if not refused and was == now:
            return 0  # thresholds are whole percentages: none lies between
        stored = await alert_repository.terms(session, [account])
        _, _, limit_percent = stored.get(account, (None, None, None))
        terms = AlertTerms(
            spending_limit_nano_usd=limit,
            credits_percent=(),
            spending_limit_percent=tuple(
                get_settings().alert_spending_limit_percent if limit_percent is None else limit_percent
            ),
        )
        events = decision_events(account, period, before=before, after=after, terms=terms, refused=refused)
        return await event_service.emit(session, events)

    async def banner(self, session: AsyncSession, *, account: Account, period: str) -> Banner | None:
        """The latest alert that still holds: the account delinquent, or in ``period`` its spending limit
        reached or its credits used up. None when none does."""
        shown: list[tuple[int, Banner]] = []
        if account.status == "delinquent":
            event = await event_repository.latest_of_types(session, account=account.name, types=[ACCOUNT_DELINQUENT])
            shown.append(
                (
                    # Delinquent since before events were kept: nothing later can be newer.
                    event.id if event else _NO_EVENT,
                    Banner(
                        ACCOUNT_DELINQUENT,
                        "A payment failed: new requests are refused until the unpaid invoice is paid.",
                        event.created_at if event else None,
                    ),
                )
            )
        totals = (await balances_repository.read_totals(session, [(account.name, period)])).get((account.name, period))
        if totals is not None:
            figures = figures_of(totals)
            limit = account.spending_limit_nano_usd
            if limit is not None and limit > 0 and figures.payg_committed >= limit:
                event = await event_repository.latest_of_types(
                    session, account=account.name, types=[SPENDING_LIMIT_REACHED], period=period
                )
                if event is not None:
                    message = "Spending limit reached: new pay-as-you-go requests are refused until it is raised or the period ends."
                    shown.append((event.id, Banner(SPENDING_LIMIT_REACHED, message, event.created_at)))
            if figures.granted > 0 and figures.used >= figures.granted:
                event = await event_repository.latest_of_types(
                    session, account=account.name, types=[CREDITS_EXHAUSTED], period=period
                )
                if event is not None:
                    terms = get_settings().plans.get(account.plan)
                    after = (
                        "further usage is charged pay-as-you-go"
                        if terms is not None and terms.pay_as_you_go
                        else "routed requests are refused until the next period"
                    )
                    shown.append(
                        (
                            event.id,
                            Banner(CREDITS_EXHAUSTED, f"This period's credits are used up: {after}.", event.created_at),
                        )
                    )
        return max(shown, key=lambda item: item[0])[1] if shown else None


def _json(thresholds: Thresholds) -> str:
    value = {"credits_percent": thresholds.credits_percent, "spending_limit_percent": thresholds.spending_limit_percent}
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


alerts_service = AlertService()
