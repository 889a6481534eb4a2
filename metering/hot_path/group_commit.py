"""SQLite ingest: the batches that arrive while one is being written share the next transaction.

SQLite has one writer at a time, and most of what a batch costs it is per transaction: a
1,000-record batch over 1,000 accounts dirties some 3,000 index pages, each written to the
WAL at commit and copied back at the next checkpoint. Batches queued behind the writer
name mostly the same accounts, hence the same pages, so one transaction for all of them
writes those pages once (a group commit). Each batch is still stored on its own, in arrival
order, exactly as it would be in a transaction of its own begun after the previous one
committed; when a shared transaction fails, each of its batches is retried alone, so a batch
only ever fails of its own error. PostgreSQL writes concurrently and takes no part in this.

A multi-transaction entry point (ingest): it opens and commits each shared transaction (and
each batch's retry alone) itself, since one transaction holds the batches of several requests.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from metering.db import Database

if TYPE_CHECKING:
    from metering.usage.service import CheckedBatch, IngestResult

# A shared transaction takes no more batches past this many records: it holds SQLite's write
# lock, which other writers (authorize's holds, jobs) wait for, for as long as its records take to write.
MAX_GROUP_RECORDS = 5_000
# How long a writer that got the turn with no other batch waiting waits for batches still being
# checked to join its group (with others waiting it starts at once: checks then overlap the writing).
LINGER_SECONDS = 0.005

Store = Callable[[AsyncSession, "CheckedBatch"], Awaitable["IngestResult"]]
_Entry = tuple["CheckedBatch", "asyncio.Future[IngestResult]"]


@dataclass
class _Queue:
    """The batches of one database waiting to be written, and the turn of the one writing them."""

    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: list[_Entry] = field(default_factory=list)
    # Batches being checked (``arriving``), and a signal each time one of them is done.
    arriving: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


# Per engine, so each database (and each test's) has its own.
_queues: weakref.WeakKeyDictionary[AsyncEngine, _Queue] = weakref.WeakKeyDictionary()


def _queue_of(db: Database) -> _Queue:
    queue = _queues.get(db.engine)
    if queue is None:
        queue = _queues[db.engine] = _Queue()
    return queue


@contextmanager
def arriving(db: Database) -> Iterator[None]:
    """Around the checks of a batch about to be stored with ``store_in_turn``: a writer taking the
    turn alone meanwhile waits a moment for it, rather than commit alone just before it queues."""
    queue = _queue_of(db)
    queue.arriving += 1
    try:
        yield
    finally:
        queue.arriving -= 1
        queue.arrived.set()


async def store_in_turn(db: Database, batch: CheckedBatch, store: Store) -> IngestResult:
    """Store ``batch`` with ``store`` in a transaction shared with the batches queued with it.

    Whoever gets the turn writes every batch waiting (up to ``MAX_GROUP_RECORDS``) in one
    transaction, its own included unless earlier ones filled it; the others find theirs done.
    Queued on an asyncio lock, the next transaction begins as soon as the previous one commits,
    rather than when SQLite's busy handler, asleep between tries, looks again.
    """
    queue = _queue_of(db)
    future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
    queue.waiting.append((batch, future))
    try:
        async with queue.turn:
            if not future.done() and len(queue.waiting) < 2:
                # Alone so far: worth a moment's wait for batches still being checked.
                await _await_arrivals(queue)
            while not future.done():
                group = _take(queue.waiting)
                if not group:  # not waiting, yet not done: cannot happen, but must not loop
                    raise RuntimeError("an ingest batch left the queue without a result")
                # Shielded: the writer's own request being cancelled must not undo the others'.
                await asyncio.shield(_store_group(db, group, store))
    except BaseException:
        queue.waiting[:] = [entry for entry in queue.waiting if entry[1] is not future]
        raise
    return future.result()


async def _await_arrivals(queue: _Queue) -> None:
    """Until no batch is being checked, for at most ``LINGER_SECONDS``: a batch that misses a group
    costs a commit of its own, which writes the same pages again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    while queue.arriving and (left := deadline - loop.time()) > 0:
        queue.arrived.clear()
        try:
            await asyncio.wait_for(queue.arrived.wait(), left)
        except TimeoutError:
            return


def _take(waiting: list[_Entry]) -> list[_Entry]:
    """The next group: the oldest batches waiting, at least one, up to ``MAX_GROUP_RECORDS``."""
    group: list[_Entry] = []
    records = 0
    while waiting and (not group or records + len(waiting[0][0].valid) <= MAX_GROUP_RECORDS):
        entry = waiting.pop(0)
        group.append(entry)
        records += len(entry[0].valid)
    return group


async def _store_group(db: Database, group: list[_Entry], store: Store) -> None:
    try:
        results = []
        async with db.session_scope() as session:
            for batch, _ in group:
                results.append(await store(session, batch))
                # The next batch starts with an empty session, as it would in a transaction of its own.
                await session.flush()
                session.expunge_all()
    except Exception as exc:  # noqa: BLE001 - retried alone, then handed to the waiting request, which raises it
        if len(group) > 1:
            for entry in group:
                await _store_group(db, [entry], store)
        elif not group[0][1].done():
            group[0][1].set_exception(exc)
        return
    except BaseException:
        # Cancelled (the loop shutting down): no batch of the group was stored; their requests are cancelled too.
        for _, future in group:
            future.cancel()
        raise
    for (_, future), result in zip(group, results, strict=True):
        if not future.done():
            future.set_result(result)
