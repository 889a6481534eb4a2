"""Fixtures of cost-collection tests: a simulated provider on loopback and a backlog of pending requests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from metering.collection.service import CollectionPolicy, collection_service
from metering.db import Database
from metering.ledger.verify import verify
from metering.models import Account, LedgerAccount, LedgerEntry, LedgerTransaction, ProviderCollectionState, UsageRecord
from simulator.server import SimulatorHandle, simulator_in_thread
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.factories.usage import create_pending_usage

# Short back-off for tests (tests end a provider's back-off explicitly); a missing ID waits 0.05 s.
TEST_POLICY = CollectionPolicy(
    retry_base_seconds=0.05,
    retry_cap_seconds=0.2,
    provider_backoff_base_seconds=5.0,
    provider_backoff_cap_seconds=10.0,
    circuit_failures=3,
    circuit_cooldown_seconds=0.6,
)


@pytest.fixture(autouse=True)
def fast_policy() -> Iterator[None]:
    previous = collection_service.policy
    collection_service.policy = TEST_POLICY
    yield
    collection_service.policy = previous


@pytest.fixture
def simulator() -> Iterator[SimulatorHandle]:
    with simulator_in_thread(seed=7) as handle:
        yield handle


@dataclass
class Backlog:
    """Pending requests of one provider, and the cost the simulator knows for each."""

    provider_id: str
    costs: dict[str, int]
    ids: dict[str, int]

    def cost_by_row(self) -> dict[int, int]:
        return {self.ids[rid]: cost for rid, cost in self.costs.items()}


async def make_backlog(
    db: Database,
    simulator: SimulatorHandle,
    *,
    count: int,
    provider_id: str = "together",
    prefix: str = "req",
    account: str = "alice",
) -> Backlog:
    """An account on pay-as-you-go, a provider asking ``simulator``, and ``count`` pending requests
    whose costs (100,000 + i nano-USD) the simulator knows."""
    costs = {f"{prefix}-{i:05d}": 100_000 + i for i in range(count)}
    async with db.session_scope() as session:
        if await session.get(Account, account) is None:
            await create_account(session, account, plan="pro")
        await create_provider(session, provider_id, url=simulator.base_url, cost_token="provider-token")
        ids = await create_pending_usage(session, provider_id=provider_id, request_ids=list(costs), user=account)
    simulator.preload(costs=costs)
    return Backlog(provider_id, costs, ids)


async def statuses(db: Database, provider_id: str | None = None) -> dict[str, int]:
    async with db.session_scope() as session:
        statement = select(UsageRecord.status, func.count()).group_by(UsageRecord.status)
        if provider_id:
            statement = statement.where(UsageRecord.provider_id == provider_id)
        return dict((await session.execute(statement)).all())


async def collection_state(db: Database, provider_id: str) -> ProviderCollectionState | None:
    async with db.session_scope() as session:
        return await session.get(ProviderCollectionState, provider_id)


async def assert_priced_exactly_once(db: Database, expected: dict[int, int]) -> None:
    """Every row of ``expected`` priced at its cost, one cost posting each, the payable equal to the sum,
    and the ledger's own invariants hold."""
    async with db.session_scope() as session:
        rows = dict(
            (
                await session.execute(
                    select(UsageRecord.id, UsageRecord.cost_nano_usd).where(UsageRecord.status == "priced")
                )
            ).all()
        )
        assert rows == expected
        postings = dict(
            (
                await session.execute(
                    select(LedgerTransaction.usage_record_id, func.count())
                    .where(LedgerTransaction.usage_record_id.is_not(None))
                    .group_by(LedgerTransaction.usage_record_id)
                )
            ).all()
        )
        assert postings == {row_id: 1 for row_id in expected}
        payable = await session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount_nano_usd), 0))
            .join(LedgerTransaction, LedgerEntry.transaction_id == LedgerTransaction.id)
            .join(LedgerAccount, LedgerEntry.ledger_account_id == LedgerAccount.id)
            .where(LedgerTransaction.usage_record_id.is_not(None), LedgerAccount.kind == "payable")
        )
        assert -payable == sum(expected.values())
    await run_ledger_verify(db)


async def run_ledger_verify(db: Database) -> None:
    """The ledger's own invariant check (``metering verify``)."""
    report = await verify(db)
    assert report.ok, [line for check in report.checks for line in check.breaches]
