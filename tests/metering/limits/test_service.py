"""Spending limits and disabled providers: every change audited with who, when, before and after."""

from __future__ import annotations

import pytest

from metering.db import Database
from metering.errors import AccountNotFound
from metering.limits.errors import NegativeSpendingLimit, SpendingLimitNotApplicable, UnknownProviders
from metering.limits.service import limits_service
from metering.models import Account
from metering.periods import utcnow
from tests.metering.authorize.helpers import seed


class TestSpendingLimit:
    async def test_set_change_clear_each_audited(self, db: Database) -> None:
        await seed(db)
        start = utcnow()
        for limit in (5_000_000_000, 7_000_000_000, 7_000_000_000, None):
            async with db.session_scope() as session:
                await limits_service.set_spending_limit(
                    session, account_name="acme", limit_nano_usd=limit, actor="alice"
                )
        async with db.session_scope() as session:
            assert (await session.get(Account, "acme")).spending_limit_nano_usd is None
            trail = await limits_service.list_audit(session, account_name="acme")
        assert [(e.actor, e.action, e.before, e.after) for e in trail] == [
            (
                "alice",
                "spending_limit.set",
                {"spending_limit_nano_usd": 7_000_000_000},
                {"spending_limit_nano_usd": None},
            ),
            (
                "alice",
                "spending_limit.set",
                {"spending_limit_nano_usd": 5_000_000_000},
                {"spending_limit_nano_usd": 7_000_000_000},
            ),
            (
                "alice",
                "spending_limit.set",
                {"spending_limit_nano_usd": None},
                {"spending_limit_nano_usd": 5_000_000_000},
            ),
        ]
        assert all(start <= e.created_at <= utcnow() for e in trail)

    async def test_refused_changes_leave_no_trace(self, db: Database) -> None:
        await seed(db)
        async with db.session_scope() as session:
            with pytest.raises(SpendingLimitNotApplicable):
                await limits_service.set_spending_limit(session, account_name="bob", limit_nano_usd=1, actor="bob")
            with pytest.raises(NegativeSpendingLimit):
                await limits_service.set_spending_limit(session, account_name="alice", limit_nano_usd=-1, actor="alice")
            with pytest.raises(AccountNotFound):
                await limits_service.set_spending_limit(session, account_name="ghost", limit_nano_usd=1, actor="x")
            assert await limits_service.list_audit(session, account_name="bob") == []
            assert await limits_service.list_audit(session, account_name="alice") == []

    async def test_audit_pages_newest_first(self, db: Database) -> None:
        await seed(db)
        for limit in range(1, 6):
            async with db.session_scope() as session:
                await limits_service.set_spending_limit(
                    session, account_name="alice", limit_nano_usd=limit, actor="alice"
                )
        async with db.session_scope() as session:
            page = await limits_service.list_audit(session, account_name="alice", limit=2)
            rest = await limits_service.list_audit(session, account_name="alice", limit=10, before_id=page[-1].id)
        assert [e.after["spending_limit_nano_usd"] for e in page + rest] == [5, 4, 3, 2, 1]


class TestDisabledProviders:
    async def test_replace_audited_sorted(self, db: Database) -> None:
        await seed(db)
        async with db.session_scope() as session:
            first = await limits_service.set_disabled_providers(
                session, account_name="acme", providers=["together", "fireworks-ai", "together"], actor="alice"
            )
        async with db.session_scope() as session:
            await limits_service.set_disabled_providers(
                session, account_name="acme", providers=["paid-only"], actor="carol"
            )
            assert (
                await limits_service.set_disabled_providers(
                    session, account_name="acme", providers=["paid-only"], actor="carol"
                )
                is None
            )
            assert await limits_service.disabled_providers(session, account_name="acme") == ["paid-only"]
            trail = await limits_service.list_audit(session, account_name="acme")
        assert (first.before, first.after) == (
            {"disabled_providers": []},
            {"disabled_providers": ["fireworks-ai", "together"]},
        )
        assert [(e.actor, e.action, e.before, e.after) for e in trail] == [
            (
                "carol",
                "disabled_providers.set",
                {"disabled_providers": ["fireworks-ai", "together"]},
                {"disabled_providers": ["paid-only"]},
            ),
            (
                "alice",
                "disabled_providers.set",
                {"disabled_providers": []},
                {"disabled_providers": ["fireworks-ai", "together"]},
            ),
        ]

    async def test_unknown_provider_refused(self, db: Database) -> None:
        await seed(db)
        async with db.session_scope() as session:
            with pytest.raises(UnknownProviders) as caught:
                await limits_service.set_disabled_providers(
                    session, account_name="acme", providers=["together", "nowhere"], actor="alice"
                )
            assert caught.value.context == {"providers": ["nowhere"]}
            assert await limits_service.disabled_providers(session, account_name="acme") == []
