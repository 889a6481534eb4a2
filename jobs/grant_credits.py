"""Grant the current period's credits to every account, and next period's ahead of it (idempotent;
safe with racing schedulers).

In the last ``METERING_CREDITS_GRANT_AHEAD_HOURS`` of a month each run also grants the next month,
so the month's first requests find their credits granted (``metering.credits.service``); its first
run in the new month sets those grants to the plans accounts have then. Each run also expires what
is left of credit grants and prepaid credits whose last period has ended (``metering.credit_grants``).

Each page of accounts is one transaction through ``credits_service.grant_period``, which locks,
in name order, only the rows with something to do: a second scheduler waits and then finds them
granted. A page that fails is logged and skipped; the next run (or the account's first request,
which grants lazily) catches it up.
"""

from __future__ import annotations

import logging

from metering.accounts.repository import account_repository
from metering.credit_grants.service import credit_grant_service
from metering.credits.repository import credits_repository
from metering.credits.service import credits_service, periods_to_grant
from metering.db import Database
from metering.money import format_usd
from metering.periods import current_period, parse_period, utcnow

logger = logging.getLogger(__name__)

ACCOUNTS_PER_TRANSACTION = 500


async def run_once(database: Database, *, period: str | None = None) -> str:
    """Grant ``period`` (default: the current one, and the next one in the current one's last hours)
    to every account; returns a summary line per period."""
    periods = [parse_period(period)] if period else periods_to_grant(utcnow())
    lines = [await grant_every_account(database, p) for p in periods]
    expired = await expire_credit_grants(database)
    return "\n".join([*lines, expired] if expired else lines)


async def expire_credit_grants(database: Database) -> str:
    """Post the expiry of what is left of grants and prepaid credits whose last period has ended,
    a bounded pass per transaction; returns a one-line summary, or "" when nothing expired."""
    expired = 0
    while True:
        async with database.session_scope() as session:
            now = await credit_grant_service.expire(session)
        if not now:
            break
        expired += now
    return f"credit grants: {format_usd(expired)} expired now" if expired else ""


async def grant_every_account(database: Database, period: str) -> str:
    """Grant ``period`` to every account, a page per transaction; returns a one-line summary."""
    after: str | None = None
    accounts = granted = failed = 0
    while True:
        async with database.session_scope() as session:
            names = await credits_repository.account_names_after(session, after=after, limit=ACCOUNTS_PER_TRANSACTION)
        if not names:
            break
        after = names[-1]
        try:
            async with database.session_scope() as session:
                page = list((await account_repository.get_many(session, names)).values())
                granted += await credits_service.grant_period(session, accounts=page, period=period)
        except Exception:  # one page's failure must not stop the others
            logger.exception("granting %s credits to accounts after %r failed", period, names[0])
            failed += len(names)
            continue
        accounts += len(names)
    ahead = " (ahead)" if period > current_period() else ""
    summary = f"grant-credits {period}{ahead}: {accounts} account(s) checked, {format_usd(granted)} granted now"
    return summary + (f", {failed} failed" if failed else "")
