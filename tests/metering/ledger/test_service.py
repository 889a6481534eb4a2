"""ledger_service.post / post_many / write_many: balanced, idempotent postings with cached balances."""

from __future__ import annotations

import pytest

from metering.ledger import codes
from metering.ledger.errors import LedgerConflict, UnbalancedPosting, UnknownLedgerAccount
from metering.ledger.service import Posting, ledger_service
from tests.metering.ledger.helpers import balance, entries_sum, transactions

PERIOD = "2026-11"
EXPENSE = codes.credits_expense(PERIOD)
ALICE = codes.credits("alice", PERIOD)


class TestPost:
    async def test_balanced_posting_moves_both_balances(self, session) -> None:
        posted = await ledger_service.post(
            session,
            kind=codes.GRANT,
            idempotency_key="grant:alice:2026-11",
            period=PERIOD,
            entries=[(EXPENSE, 2_000_000_000), (ALICE, -2_000_000_000)],
            account_name="alice",
        )
        assert posted is True
        assert await balance(session, EXPENSE) == 2_000_000_000
        assert await balance(session, ALICE) == -2_000_000_000
        assert await entries_sum(session, ALICE) == -2_000_000_000

    async def test_unbalanced_posting_is_refused_and_writes_nothing(self, session) -> None:
        with pytest.raises(UnbalancedPosting):
            await ledger_service.post(
                session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=[(EXPENSE, 5), (ALICE, -4)]
            )
        assert await transactions(session) == []

    async def test_float_amount_is_refused(self, session) -> None:
        with pytest.raises(UnbalancedPosting):
            await ledger_service.post(
                session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=[(EXPENSE, 0.5), (ALICE, -0.5)]
            )

    async def test_unknown_code_is_refused(self, session) -> None:
        with pytest.raises(UnknownLedgerAccount):
            await ledger_service.post(
                session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=[("cash", 5), (ALICE, -5)]
            )

    async def test_replay_with_same_entries_is_a_no_op(self, session) -> None:
        entries = [(EXPENSE, 7), (ALICE, -7)]
        await ledger_service.post(session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=entries)
        again = await ledger_service.post(
            session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=list(reversed(entries))
        )
        assert again is False
        assert await balance(session, EXPENSE) == 7
        assert len(await transactions(session)) == 1

    async def test_same_key_different_entries_is_a_conflict(self, session) -> None:
        await ledger_service.post(
            session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=[(EXPENSE, 7), (ALICE, -7)]
        )
        with pytest.raises(LedgerConflict):
            await ledger_service.post(
                session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=[(EXPENSE, 8), (ALICE, -8)]
            )
        assert await balance(session, EXPENSE) == 7


class TestPostMany:
    async def test_many_postings_aggregate_balances(self, session) -> None:
        postings = [
            Posting(
                kind="adjustment",
                idempotency_key=f"k{i}",
                period=PERIOD,
                entries=((EXPENSE, i), (codes.credits(f"user{i % 3}", PERIOD), -i)),
            )
            for i in range(1, 301)
        ]
        fresh = await ledger_service.post_many(session, postings)
        assert fresh == [True] * 300
        assert await balance(session, EXPENSE) == sum(range(1, 301))
        assert await balance(session, codes.credits("user0", PERIOD)) == -sum(range(3, 301, 3))

    async def test_duplicate_key_in_one_batch_posts_once(self, session) -> None:
        posting = Posting(kind="adjustment", idempotency_key="k", period=PERIOD, entries=((EXPENSE, 3), (ALICE, -3)))
        assert await ledger_service.post_many(session, [posting, posting]) == [True, False]
        assert await balance(session, EXPENSE) == 3

    async def test_conflicting_keys_in_one_batch_are_refused(self, session) -> None:
        first = Posting(kind="adjustment", idempotency_key="k", period=PERIOD, entries=((EXPENSE, 3), (ALICE, -3)))
        second = Posting(kind="adjustment", idempotency_key="k", period=PERIOD, entries=((EXPENSE, 4), (ALICE, -4)))
        with pytest.raises(LedgerConflict):
            await ledger_service.post_many(session, [first, second])
        assert await transactions(session) == []


class TestWriteMany:
    async def test_balances_move_only_with_move_balances(self, session) -> None:
        posting = Posting(kind="adjustment", idempotency_key="k", period=PERIOD, entries=((EXPENSE, 3), (ALICE, -3)))
        written = await ledger_service.write_many(session, [posting])
        assert written.fresh == [True]
        assert (await entries_sum(session, ALICE), await balance(session, ALICE)) == (-3, 0)
        await ledger_service.move_balances(session, written)
        assert await balance(session, ALICE) == -3

    async def test_without_creating_accounts_a_missing_one_writes_nothing(self, session) -> None:
        await ledger_service.post(
            session, kind="adjustment", idempotency_key="k1", period=PERIOD, entries=[(EXPENSE, 1), (ALICE, -1)]
        )
        bob = codes.credits("bob", PERIOD)
        posting = Posting(kind="adjustment", idempotency_key="k2", period=PERIOD, entries=((EXPENSE, 2), (bob, -2)))
        assert await ledger_service.write_many(session, [posting], create_accounts=False) is None
        assert len(await transactions(session)) == 1
        existing = Posting(kind="adjustment", idempotency_key="k3", period=PERIOD, entries=((EXPENSE, 2), (ALICE, -2)))
        assert (await ledger_service.write_many(session, [existing], create_accounts=False)).fresh == [True]
