"""Balanced, idempotent postings to the double-entry ledger, one or many per call.

A posting is a list of ``(ledger account code, signed amount)``; debit > 0, credit < 0
(see ``metering/models/ledger.py``). Its idempotency key makes it happen at most once:
the same key with the same entries is a replay (no-op), with other entries a
``LedgerConflict``. Cached balances move in the same transaction as the entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

from sqlalchemy.ext.asyncio import AsyncSession

from metering.ledger import codes
from metering.ledger.errors import LedgerConflict, UnbalancedPosting, UnknownLedgerAccount
from metering.ledger.repository import ledger_repository
from metering.periods import utcnow


# Not frozen: settling a batch builds one per priced request, and a frozen dataclass sets each
# field through object.__setattr__ (three times the cost of building it).
@dataclass(slots=True)
class Posting:
    kind: str
    idempotency_key: str
    period: str
    entries: tuple[tuple[str, int], ...]
    account_name: str | None = None
    provider_id: str | None = None
    usage_record_id: int | None = None
    original_period: str | None = None
    memo: str | None = None
    plan: str | None = None


@dataclass(slots=True)
class WrittenPostings:
    """What ``write_many`` wrote: per posting, True when written now; and the balance moves owed."""

    fresh: list[bool]
    balance_deltas: dict[int, int]


def normalized(entries: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """Entries summed per account, zeros dropped, sorted: the form two postings are compared in."""
    sums: dict[str, int] = {}
    for code, amount in entries:
        if type(amount) is not int and (not isinstance(amount, int) or isinstance(amount, bool)):
            raise UnbalancedPosting(f"amount of {code!r} is not an integer of nano-USD: {amount!r}")
        sums[code] = sums.get(code, 0) + amount
    return tuple(sorted([(code, amount) for code, amount in sums.items() if amount]))


def _check(posting: Posting) -> tuple[tuple[str, int], ...]:
    entries = normalized(posting.entries)
    total = sum(amount for _, amount in entries)
    if total != 0:
        raise UnbalancedPosting(
            f"posting {posting.idempotency_key!r} does not balance: entries sum to {total}", key=posting.idempotency_key
        )
    for code, _ in entries:
        try:
            codes.parse(code)
        except ValueError as exc:
            raise UnknownLedgerAccount(str(exc), code=code) from exc
    return entries


class LedgerService:
    async def post(
        self,
        session: AsyncSession,
        *,
        kind: str,
        idempotency_key: str,
        period: str,
        entries: Sequence[tuple[str, int]],
        account_name: str | None = None,
        provider_id: str | None = None,
        usage_record_id: int | None = None,
        original_period: str | None = None,
        memo: str | None = None,
        plan: str | None = None,
    ) -> bool:
        """Post one balanced transaction; True when written now, False for a replay."""
        posting = Posting(
            kind=kind,
            idempotency_key=idempotency_key,
            period=period,
            entries=tuple(entries),
            account_name=account_name,
            provider_id=provider_id,
            usage_record_id=usage_record_id,
            original_period=original_period,
            memo=memo,
            plan=plan,
        )
        return (await self.post_many(session, [posting]))[0]

    async def post_many(self, session: AsyncSession, postings: Sequence[Posting]) -> list[bool]:
        """Post many transactions in a few statements; per posting, True when written now.

        Every posting is checked before anything is written; a conflict raises and the
        caller's transaction rolls back whole.
        """
        written = await self.write_many(session, postings)
        assert written is not None  # accounts are created
        await self.move_balances(session, written)
        return written.fresh

    @overload
    async def write_many(
        self, session: AsyncSession, postings: Sequence[Posting], *, create_accounts: Literal[True] = True
    ) -> WrittenPostings: ...

    @overload
    async def write_many(
        self, session: AsyncSession, postings: Sequence[Posting], *, create_accounts: bool
    ) -> WrittenPostings | None: ...

    async def write_many(
        self, session: AsyncSession, postings: Sequence[Posting], *, create_accounts: bool = True
    ) -> WrittenPostings | None:
        """``post_many`` but for the cached balances, which ``move_balances`` moves later in the
        same transaction: their rows are locked until it ends, so a caller that has slower work
        between the two keeps them locked for less time.

        Without ``create_accounts``, writes nothing and returns None when a ledger account the
        postings name does not exist yet: a caller that will lock other rows after writing must
        not hold an uncreated account's insert meanwhile, which a writer holding those rows may
        be about to insert too.
        """
        checked = [_check(posting) for posting in postings]
        first_of_key: dict[str, int] = {}
        for index, posting in enumerate(postings):
            earlier = first_of_key.setdefault(posting.idempotency_key, index)
            if earlier != index and checked[earlier] != checked[index]:
                raise LedgerConflict(
                    f"two different postings for {posting.idempotency_key!r} in one batch", key=posting.idempotency_key
                )
        unique = sorted(first_of_key.values())
        named = {code for index in unique for code, _ in checked[index]}
        if create_accounts:
            account_ids = await ledger_repository.ensure_accounts(session, named)
        else:
            account_ids = await ledger_repository.account_ids(session, named)
            if len(account_ids) < len(named):
                return None
        entries = [
            (postings[index].idempotency_key, account_ids[code], amount)
            for index in unique
            for code, amount in checked[index]
        ]
        left_out = await ledger_repository.insert_postings(
            session, [postings[i] for i in unique], entries, created_at=utcnow()
        )
        await self._check_replays(
            session, [i for i in unique if postings[i].idempotency_key in left_out], postings, checked
        )
        deltas: dict[int, int] = defaultdict(int)
        for key, account_id, amount in entries:
            if key not in left_out:
                deltas[account_id] += amount
        written_now: set[str] = set()
        fresh = []
        for posting in postings:
            fresh.append(posting.idempotency_key not in left_out and posting.idempotency_key not in written_now)
            written_now.add(posting.idempotency_key)
        return WrittenPostings(fresh, deltas)

    async def move_balances(self, session: AsyncSession, written: WrittenPostings) -> None:
        """Add what ``write_many`` wrote to the cached balances of its accounts."""
        await ledger_repository.add_to_balances(session, written.balance_deltas)

    async def _check_replays(
        self,
        session: AsyncSession,
        indexes: list[int],
        postings: Sequence[Posting],
        checked: list[tuple[tuple[str, int], ...]],
    ) -> None:
        """Postings that were not inserted must be exact replays of what is stored."""
        if not indexes:
            return
        stored = await ledger_repository.transactions_by_key(session, [postings[i].idempotency_key for i in indexes])
        missing = [i for i in indexes if postings[i].idempotency_key not in stored]
        if missing:
            # Not inserted, yet no such key: another transaction already holds the request's cost.
            posting = postings[missing[0]]
            raise LedgerConflict(
                f"usage record {posting.usage_record_id} already has a cost transaction; "
                f"{posting.idempotency_key!r} refused",
                key=posting.idempotency_key,
            )
        entries = await ledger_repository.entries_of(session, [row.id for row in stored.values()])
        for index in indexes:
            posting = postings[index]
            row = stored[posting.idempotency_key]
            same = (
                normalized(entries[row.id]) == checked[index]
                and row.kind == posting.kind
                and row.period == posting.period
                and row.usage_record_id == posting.usage_record_id
            )
            if not same:
                raise LedgerConflict(
                    f"{posting.idempotency_key!r} was already posted with different entries",
                    key=posting.idempotency_key,
                )


ledger_service = LedgerService()
