"""A period's first grants on the request path, made in batches: decisions that find their payer's
period not granted yet wait for one transaction that grants them all, then decide as any other.

A grant is a ledger posting: made in each decision's own transaction, every such decision would
pay for a dozen statements, and all of them would queue on the one row every grant of the period
moves, the balance of its ``credits_expense:<period>`` ledger account. Here one batch at a
time grants the payers waiting in one transaction, the way postings grant
(``credits_service.lock_account_periods``); decisions arriving meanwhile wait and are granted
together in the next one, which starts no sooner than ``BATCH_INTERVAL_SECONDS`` after the
last: a batch costs about the same whether it grants one payer or fifty (a dozen statements),
so under a month's first burst the payers gather into a few batches instead of costing a
transaction each, while a lone payer mid-month is granted at once. A batch that fails sends
each of its decisions on to the step-by-step path, which grants its payer alone, so a payer's
grant only fails of its own error.

Grants are made ahead at a month's end (the grant-credits job), so at the month's start this
serves the accounts that job has not seen: created since, or every one if it did not run.
PostgreSQL only (``metering.authorize.service``); ``tests/metering/hot_path/test_grant_batches.py``
holds it to the ordinary path: the same rows, postings and balances as granting one by one.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from metering.db import Database

logger = logging.getLogger(__name__)

# A batch holds its payers' period rows locked until it commits; past this many it leaves the
# rest to the next batch rather than make their decisions wait on one long transaction.
MAX_BATCH_ACCOUNTS = 500
# The least time from one batch's start to the next one's: what a payer may wait to be granted
# with others, against a batch's fixed cost paid once per payer.
BATCH_INTERVAL_SECONDS = 0.02

# Grants ``period``'s credits to the named accounts, in a transaction of its own.
GrantMany = Callable[[list[str], str], Awaitable[None]]
_Entry = tuple[str, str, "asyncio.Future[bool]"]  # (period, account, whether its batch was granted)


@dataclass
class _Queue:
    """The payers of one database waiting to be granted, the turn of the batch granting them, and when
    the last batch started (event-loop time)."""

    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: list[_Entry] = field(default_factory=list)
    last_start: float = float("-inf")


# Per engine, so each database (and each test's) has its own.
_queues: weakref.WeakKeyDictionary[AsyncEngine, _Queue] = weakref.WeakKeyDictionary()


def _queue_of(database: Database) -> _Queue:
    queue = _queues.get(database.engine)
    if queue is None:
        queue = _queues[database.engine] = _Queue()
    return queue


async def granted_in_batch(database: Database, *, account: str, period: str, grant: GrantMany) -> bool:
    """Wait until ``account``'s credits of ``period`` are granted with ``grant``, in a batch with the
    payers waiting meanwhile; False when that batch failed (the caller then goes step by step)."""
    queue = _queue_of(database)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()
    queue.waiting.append((period, account, future))
    try:
        async with queue.turn:
            # Until this payer is granted, or taken into a batch still in flight (its granting decision
            # was cancelled, which let the turn go).
            while _is_waiting(queue, future):
                # Too soon after the last batch: the payers arriving meanwhile join this one.
                pause = queue.last_start + BATCH_INTERVAL_SECONDS - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                queue.last_start = loop.time()
                batch_period, entries = _take(queue.waiting)
                # Shielded: the granting decision's own request being cancelled must not undo the others'.
                await asyncio.shield(_grant_batch(batch_period, entries, grant))
        return await future
    except BaseException:
        queue.waiting[:] = [entry for entry in queue.waiting if entry[2] is not future]
        raise


def _is_waiting(queue: _Queue, future: asyncio.Future[bool]) -> bool:
    return not future.done() and any(entry[2] is future for entry in queue.waiting)


def _take(waiting: list[_Entry]) -> tuple[str, list[_Entry]]:
    """The next batch: the oldest payer's period and the payers waiting for it, up to ``MAX_BATCH_ACCOUNTS``."""
    if not waiting:
        return "", []
    period = waiting[0][0]
    taken: list[_Entry] = []
    names: set[str] = set()
    rest: list[_Entry] = []
    for entry in waiting:
        if entry[0] == period and (entry[1] in names or len(names) < MAX_BATCH_ACCOUNTS):
            taken.append(entry)
            names.add(entry[1])
        else:
            rest.append(entry)
    waiting[:] = rest
    return period, taken


async def _grant_batch(period: str, entries: list[_Entry], grant: GrantMany) -> None:
    try:
        await grant(sorted({account for _, account, _ in entries}), period)
    except Exception:  # logged; each decision then goes step by step, where an error is its own
        logger.warning("granting %s credits to %d account(s) in one batch failed", period, len(entries), exc_info=True)
        granted = False
    except BaseException:
        # Cancelled (the loop shutting down): nothing was granted; the waiting decisions are cancelled too.
        for _, _, future in entries:
            future.cancel()
        raise
    else:
        granted = True
    for _, _, future in entries:
        if not future.done():
            future.set_result(granted)
