"""Random sequences of grants, costs, replays, conflicting replays, seat changes, closes and late
costs: after every step the ledger verifies clean and each account's charges add up to its costs."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from metering.accounts.service import AccountSync, account_service
from metering.credits.service import credits_service
from metering.db import Database
from metering.ledger.verify import verify_session
from metering.models import Account, AccountPeriod, Period, Provider
from metering.periods import current_period, previous_period
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest, QuarantinedRequest
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.metering.ledger.helpers import at, period_row, store_usage

PLANS = ("free", "pro", "team")
PROVIDERS = ("eligible", "ineligible")
_examples = itertools.count()

steps = st.lists(
    st.one_of(
        st.tuples(st.just("usage"), st.integers(0, 2), st.integers(0, 1), st.booleans()),
        st.tuples(st.just("price"), st.integers(0, 50), st.integers(0, 3_000_000_000)),
        st.tuples(st.just("price"), st.integers(0, 50), st.integers(0, 3_000_000_000)),
        st.tuples(st.just("replay"), st.integers(0, 50)),
        st.tuples(st.just("conflict"), st.integers(0, 50), st.integers(1, 1_000)),
        st.tuples(st.just("quarantine"), st.integers(0, 50)),
        st.tuples(st.just("seats"), st.integers(0, 6)),
        st.tuples(
            st.just("close"),
        ),
        st.tuples(st.just("grant"), st.integers(0, 2)),
    ),
    min_size=1,
    max_size=14,
)


@dataclass
class Model:
    names: list[str]
    pending: list[tuple[int, str]] = field(default_factory=list)  # (record id, account)
    priced: list[tuple[int, int]] = field(default_factory=list)  # (record id, cost)
    charged: dict[str, int] = field(default_factory=lambda: defaultdict(int))


async def _setup(db: Database) -> Model:
    n = next(_examples)
    names = [f"free{n}", f"pro{n}", f"team{n}"]
    async with db.session_scope() as session:
        for name, plan in zip(names, PLANS, strict=True):
            await create_account(session, name, plan=plan, seats=2)
        for provider in PROVIDERS:
            if await session.get(Provider, provider) is None:
                await create_provider(
                    session, provider, credit_eligible=provider == "eligible", default_estimate_nano_usd=777
                )
    return Model(names=names)


async def _step(db: Database, model: Model, step: tuple) -> None:
    old = previous_period(current_period())
    async with db.session_scope() as session:
        kind = step[0]
        if kind == "usage":
            _, who, provider, last_month = step
            started = at(f"{old}-20T08:00:00Z") if last_month else None
            usage = await store_usage(session, user=model.names[who], provider=PROVIDERS[provider], started_at=started)
            model.pending.append((usage.id, model.names[who]))
        elif kind == "price" and model.pending:
            record_id, account = model.pending.pop(step[1] % len(model.pending))
            result = await settle(session, priced=[PricedRequest(record_id, step[2])])
            assert (result.priced, result.conflicts) == (1, 0)
            model.priced.append((record_id, step[2]))
            model.charged[account] += step[2]
        elif kind == "replay" and model.priced:
            record_id, cost = model.priced[step[1] % len(model.priced)]
            result = await settle(session, priced=[PricedRequest(record_id, cost)])
            assert (result.priced, result.replayed) == (0, 1)
        elif kind == "conflict" and model.priced:
            record_id, cost = model.priced[step[1] % len(model.priced)]
            result = await settle(session, priced=[PricedRequest(record_id, cost + step[2])])
            assert (result.priced, result.conflicts) == (0, 1)
        elif kind == "quarantine" and model.pending:
            record_id, _ = model.pending.pop(step[1] % len(model.pending))
            assert (await settle(session, quarantined=[QuarantinedRequest(record_id, "bad answer")])).quarantined == 1
        elif kind == "seats":
            await account_service.upsert_account(
                session, name=model.names[2], sync=AccountSync(kind="org", plan="team", seats=step[1])
            )
            account = await session.get(Account, model.names[2])
            await credits_service.lock_period(session, account=account, period=current_period())
        elif kind == "close":
            if await session.get(Period, old) is None:
                session.add(Period(period=old, status="closed"))
                await session.flush()
        elif kind == "grant":
            account = await session.get(Account, model.names[step[1]])
            await credits_service.lock_period(session, account=account, period=current_period())
        report = await verify_session(session)
        assert report.ok, [(c.name, c.breaches) for c in report.checks if not c.ok]
        for name in model.names:
            total = 0
            for period in (old, current_period()):
                row = await session.get(AccountPeriod, (name, period))
                if row is not None:
                    row = await period_row(session, name, period)
                    total += row.credits_used_nano_usd + row.payg_nano_usd + row.written_off_nano_usd
                    assert row.credits_used_nano_usd <= row.credits_granted_nano_usd
                    if name.startswith("free"):
                        assert row.payg_nano_usd == 0
            assert total == model.charged[name]


class TestInvariants:
    @hypothesis_settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(sequence=steps)
    @example(sequence=[("usage", 1, 0, True), ("close",), ("price", 0, 5), ("replay", 0), ("conflict", 0, 1)])
    @example(sequence=[("usage", 2, 0, False), ("seats", 5), ("price", 0, 9_000_000_000), ("seats", 1), ("grant", 2)])
    @example(sequence=[("usage", 0, 1, False), ("usage", 0, 0, True), ("price", 0, 7), ("quarantine", 0)])
    async def test_every_step_verifies_clean(self, db: Database, sequence: list[tuple]) -> None:
        model = await _setup(db)
        for step in sequence:
            await _step(db, model, step)
