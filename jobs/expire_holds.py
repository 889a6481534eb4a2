"""Expire holds whose usage record never came: one transaction per account, failures logged and skipped."""

from __future__ import annotations

import logging

from metering.db import Database
from metering.holds.service import holds_service
from metering.periods import utcnow

logger = logging.getLogger(__name__)

ACCOUNTS_PER_SCAN = 1000


async def run_once(database: Database) -> str:
    """Expire every hold past its TTL as of now; returns a one-line summary."""
    now = utcnow()
    holds = amount = accounts = failed = 0
    failed_accounts: set[str] = set()
    while True:
        async with database.session_scope() as session:
            pending = [
                a
                for a in await holds_service.expired_accounts(session, now=now, limit=ACCOUNTS_PER_SCAN)
                if a not in failed_accounts
            ]
        if not pending:
            break
        for account in pending:
            try:
                async with database.session_scope() as session:
                    result = await holds_service.expire_account_holds(session, account=account, now=now)
            except Exception:  # one account's failure must not stop the others
                logger.exception("expiring the holds of %s failed", account)
                failed_accounts.add(account)
                failed += 1
                continue
            holds += result.holds
            amount += result.amount_nano_usd
            accounts += 1 if result.holds else 0
    summary = f"expired {holds} holds ({amount} nano-USD) of {accounts} accounts"
    return summary + (f"; {failed} accounts failed" if failed else "")
