"""Grant the current period's credits to every account (idempotent; safe with racing schedulers).

Each page of accounts is one transaction through ``credits_service.lock_periods``: the
rows are locked in name order, so a second scheduler waits and then finds them granted.
A page that fails is logged and skipped; the next run (or the account's first request,
which grants lazily) catches it up.
"""

from __future__ import annotations

import logging

from metering.accounts.repository import account_repository
from metering.credits.repository import credits_repository
from metering.credits.service import credits_service
from metering.db import Database
from metering.money import format_usd
from metering.periods import current_period, parse_period

logger = logging.getLogger(__name__)

ACCOUNTS_PER_TRANSACTION = 500


async def run_once(database: Database, *, period: str | None = None) -> str:
    """Grant ``period`` (default: the current one) to every account; returns a one-line summary."""
    period = parse_period(period) if period else current_period()
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
    summary = f"grant-credits {period}: {accounts} account(s) checked, {format_usd(granted)} granted now"
    return summary + (f", {failed} failed" if failed else "")
