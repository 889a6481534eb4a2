"""A period's first grants in batches (``metering.hot_path.grant_batches``): decisions arriving while
a batch is granted are granted together in the next, and the result is what granting each payer on
its own gives: one grant per account and period, the same postings and balances."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from metering.authorize.service import AuthorizeRequest, authorize_service
from metering.db import Database
from metering.hot_path import grant_batches
from metering.hot_path.grant_batches import granted_in_batch
from metering.ledger import codes
from metering.ledger.verify import verify
from metering.periods import current_period
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.metering.ledger.helpers import balance, entries_sum, period_row, transactions

PERIOD = current_period()
PRO = 2_000_000_000
ESTIMATE = 100_000


class _Engine:
    """Stands for an engine: the queue is kept per engine."""


class _Database:
    def __init__(self) -> None:
        self.engine = _Engine()


class Recorder:
    """A ``grant`` that records its batches and, until ``release`` is set, keeps the first one waiting."""

    def __init__(self, *, fail: bool = False) -> None:
        self.batches: list[tuple[list[str], str]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.fail = fail

    async def __call__(self, names: list[str], period: str) -> None:
        self.batches.append((names, period))
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the database went away")


async def _waiting(database: Any, grant: Recorder, accounts: list[tuple[str, str]]) -> list[asyncio.Task[bool]]:
    """Decisions for ``accounts`` (account, period), queued behind a batch being granted for ``first``."""
    tasks = [
        asyncio.create_task(granted_in_batch(database, account=account, period=period, grant=grant))
        for account, period in accounts
    ]
    await asyncio.sleep(0)
    return tasks


class TestBatches:
    @pytest.fixture(autouse=True)
    def no_interval(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each batch starts as soon as the one before ends, so each test sees who waited for which."""
        monkeypatch.setattr(grant_batches, "BATCH_INTERVAL_SECONDS", 0)

    async def test_decisions_arriving_meanwhile_are_granted_together_in_the_next_batch(self) -> None:
        database, grant = _Database(), Recorder()
        first = await _waiting(database, grant, [("alice", PERIOD)])
        await grant.started.wait()
        rest = await _waiting(database, grant, [("carol", PERIOD), ("bob", PERIOD), ("carol", PERIOD)])
        grant.release.set()
        assert await asyncio.gather(*first, *rest) == [True, True, True, True]
        assert grant.batches == [(["alice"], PERIOD), (["bob", "carol"], PERIOD)]

    async def test_each_period_is_its_own_batch(self) -> None:
        database, grant = _Database(), Recorder()
        first = await _waiting(database, grant, [("alice", PERIOD)])
        await grant.started.wait()
        rest = await _waiting(database, grant, [("bob", "2031-01"), ("carol", PERIOD), ("dave", "2031-01")])
        grant.release.set()
        await asyncio.gather(*first, *rest)
        assert grant.batches == [(["alice"], PERIOD), (["bob", "dave"], "2031-01"), (["carol"], PERIOD)]

    async def test_a_batch_takes_at_most_its_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(grant_batches, "MAX_BATCH_ACCOUNTS", 2)
        database, grant = _Database(), Recorder()
        first = await _waiting(database, grant, [("alice", PERIOD)])
        await grant.started.wait()
        rest = await _waiting(database, grant, [(name, PERIOD) for name in ("bob", "carol", "bob", "dave")])
        grant.release.set()
        await asyncio.gather(*first, *rest)
        assert grant.batches == [(["alice"], PERIOD), (["bob", "carol"], PERIOD), (["dave"], PERIOD)]

    async def test_a_failed_batch_answers_false_to_each_of_its_decisions(self) -> None:
        database, grant = _Database(), Recorder(fail=True)
        first = await _waiting(database, grant, [("alice", PERIOD)])
        await grant.started.wait()
        rest = await _waiting(database, grant, [("bob", PERIOD)])
        grant.release.set()
        assert await asyncio.gather(*first, *rest) == [False, False]
        assert len(grant.batches) == 2  # the failure was alice's batch's; bob's was tried on its own

    async def test_the_granting_decision_cancelled_still_grants_the_others(self) -> None:
        database, grant = _Database(), Recorder()
        first = await _waiting(database, grant, [("alice", PERIOD)])
        await grant.started.wait()
        rest = await _waiting(database, grant, [("bob", PERIOD)])
        first[0].cancel()
        grant.release.set()
        assert await asyncio.gather(*rest) == [True]
        assert grant.batches == [(["alice"], PERIOD), (["bob"], PERIOD)]


async def test_decisions_arriving_soon_after_a_batch_wait_to_be_granted_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grant_batches, "BATCH_INTERVAL_SECONDS", 0.2)
    database, grant = _Database(), Recorder()
    grant.release.set()
    assert await asyncio.gather(*await _waiting(database, grant, [("alice", PERIOD)])) == [True]
    bob = await _waiting(database, grant, [("bob", PERIOD)])
    carol = await _waiting(database, grant, [("carol", PERIOD)])
    assert await asyncio.gather(*bob, *carol) == [True, True]
    assert grant.batches == [(["alice"], PERIOD), (["bob", "carol"], PERIOD)]


async def _accounts(db: Database, count: int) -> list[str]:
    names = [f"user{i:03d}" for i in range(count)]
    async with db.session_scope() as session:
        await create_provider(session, "together", default_estimate_nano_usd=ESTIMATE)
        for name in names:
            await create_account(session, name, plan="pro")
    return names


async def _first_calls(db: Database, names: list[str]) -> list[int | None]:
    """Each decision's credits remaining when allowed, else None."""
    decisions = await asyncio.gather(
        *(
            authorize_service.authorize(
                db, request=AuthorizeRequest(user=name, bill_to=None, provider="together", model="org/m")
            )
            for name in names
        )
    )
    return [d.credits_remaining_nano_usd if d.allowed else None for d in decisions]


async def _assert_granted_once_each(db: Database, names: list[str], *, holds_each: int = 1) -> None:
    async with db.session_scope() as session:
        grants = await transactions(session, kind=codes.GRANT, period=PERIOD)
        assert sorted(g.idempotency_key for g in grants) == sorted(f"grant:{name}:{PERIOD}" for name in names)
        for name in names:
            row = await period_row(session, name, PERIOD)
            assert (row.credits_granted_nano_usd, row.held_nano_usd) == (PRO, holds_each * ESTIMATE)
            assert await entries_sum(session, codes.credits(name, PERIOD)) == -PRO
        expense = codes.credits_expense(PERIOD)
        assert await balance(session, expense) == await entries_sum(session, expense) == len(names) * PRO
    report = await verify(db)
    assert report.ok, [line for check in report.checks for line in check.breaches]


class TestFirstCallsOfAPeriod:
    """PostgreSQL: the one-statement path grants in batches; SQLite grants step by step."""

    async def test_many_at_once_are_each_granted_once_and_allowed(self, db: Database) -> None:
        names = await _accounts(db, 60)
        assert await _first_calls(db, names) == [PRO - ESTIMATE] * 60
        await _assert_granted_once_each(db, names)

    async def test_two_processes_granting_the_same_accounts_grant_each_once(self, db: Database, settings) -> None:
        names = await _accounts(db, 40)
        other = Database(settings.database_url)
        try:
            answers = await asyncio.gather(_first_calls(db, names), _first_calls(other, names[::-1]))
        finally:
            await other.dispose()
        # Per account, one decision saw the other's hold and one did not.
        assert [sorted(pair) for pair in zip(answers[0], answers[1][::-1])] == [
            [PRO - 2 * ESTIMATE, PRO - ESTIMATE]
        ] * 40
        await _assert_granted_once_each(db, names, holds_each=2)
