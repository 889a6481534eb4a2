"""A provider's month for reconciliation tests: requests priced through ``settle``, and a statement of them.

``PERIOD`` is last month. together's requests of it, as the ledger has them:

| request        | ledger            | statement        | outcome                                  |
|----------------|-------------------|------------------|------------------------------------------|
| r-match        | 1,200,000         | 1,200,000        | matched                                  |
| r-zero         | 0 (no entries)    | 0                | matched                                  |
| r-late         | 400,000 late      | 400,000          | matched (posted to this month, late)     |
| r-mismatch     | 1,000,000         | 1,300,000        | amount_mismatch                          |
| r-ledger-only  | 700,000           | —                | only_ledger                              |
| r-pending      | — (pending)       | 500              | only_provider                            |
| r-custom       | — (custom key)    | 900              | only_provider                            |
| r-shared       | — (fireworks-ai's)| 123              | only_provider                            |
| r-this-month   | — (this month's)  | 50               | only_provider                            |
| ghost          | — (unknown)       | 42               | only_provider                            |

fireworks-ai priced its own r-shared (123) and together priced a request of this month (50):
neither is on together's ledger side of ``PERIOD``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import timedelta

from metering.db import Database
from metering.models import Period
from metering.periods import current_period, period_bounds, previous_period, utcnow
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.metering.ledger.helpers import store_usage

PERIOD = previous_period(current_period())
STATEMENT = {
    "r-match": 1_200_000,
    "r-zero": 0,
    "r-late": 400_000,
    "r-mismatch": 1_300_000,
    "r-pending": 500,
    "r-custom": 900,
    "r-shared": 123,
    "r-this-month": 50,
    "ghost": 42,
}
LEDGER = {"r-match": 1_200_000, "r-zero": 0, "r-late": 400_000, "r-mismatch": 1_000_000, "r-ledger-only": 700_000}


async def priced_month(db: Database) -> None:
    """The month of the module docstring, through the real ingest accounting and settling paths."""
    started_at = period_bounds(PERIOD)[0] + timedelta(days=10)
    async with db.session_scope() as session:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
        await create_provider(session, "fireworks-ai")
        ids = {}
        for request_id in ("r-match", "r-zero", "r-late", "r-mismatch", "r-ledger-only", "r-pending"):
            ids[request_id] = (await store_usage(session, request_id=request_id, started_at=started_at)).id
        await store_usage(session, request_id="r-custom", started_at=started_at, custom_key=True)
        shared = await store_usage(session, request_id="r-shared", started_at=started_at, provider="fireworks-ai")
        this_month = await store_usage(
            session,
            request_id="r-this-month",
            started_at=max(utcnow() - timedelta(minutes=5), period_bounds(current_period())[0]),
        )
    async with db.session_scope() as session:
        await settle(
            session,
            priced=[
                PricedRequest(ids["r-match"], 1_200_000),
                PricedRequest(ids["r-zero"], 0),
                PricedRequest(ids["r-mismatch"], 1_000_000),
                PricedRequest(ids["r-ledger-only"], 700_000),
                PricedRequest(shared.id, 123),
                PricedRequest(this_month.id, 50),
            ],
        )
    # The month closes; r-late's cost arrives after and is posted to the open month, naming PERIOD.
    async with db.session_scope() as session:
        session.add(Period(period=PERIOD, status="closed", closed_at=utcnow()))
    async with db.session_scope() as session:
        await settle(session, priced=[PricedRequest(ids["r-late"], 400_000)])


def csv_lines(items: Iterable[tuple[str, int]], *, newline: bytes = b"\n") -> bytes:
    lines = [b"request_id,cost_nano_usd"] + [f"{request_id},{cost}".encode() for request_id, cost in items]
    return newline.join(lines) + newline


async def chunks(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    """``body`` in small pieces, so lines and CRLFs fall across chunk boundaries."""
    for start in range(0, len(body), size):
        yield body[start : start + size]
