"""Billing test data through the real paths: usage via the ingest route, costs via ``settle``; and JWTs."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime

import httpx
import jwt
from sqlalchemy import insert, select

from metering.db import Database
from metering.ledger import codes
from metering.ledger.service import Posting, ledger_service
from metering.models import UsageRecord
from metering.periods import period_of
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest, QuarantinedRequest
from tests.conftest import TEST_JWT_SECRET
from tests.factories.accounts import add_member, create_account
from tests.factories.providers import create_provider


def make_token(
    sub: str | None,
    *,
    roles: Sequence[str] = (),
    expires_in: int = 3600,
    key: str = TEST_JWT_SECRET,
    algorithm: str = "HS256",
    **claims: object,
) -> str:
    payload: dict[str, object] = {"exp": int(time.time()) + expires_in, **claims}
    if sub is not None:
        payload["sub"] = sub
    if roles:
        payload["roles"] = list(roles)
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def as_user(sub: str, *roles: str) -> dict[str, str]:
    return bearer(make_token(sub, roles=roles))


async def seed_world(db: Database) -> None:
    """Two team orgs (acme: alice admin, bob write, carol read; globex: dave admin), a pro and a free user,
    two credit-eligible providers."""
    async with db.session_scope() as session:
        await create_provider(session, "together")
        await create_provider(session, "fireworks-ai", url="http://127.0.0.1:10")
        await create_account(session, "acme", plan="team", seats=2)
        await create_account(session, "globex", plan="team", seats=1)
        for user, plan in (
            ("alice", "pro"),
            ("bob", "free"),
            ("carol", "free"),
            ("dave", "pro"),
            ("erin", "pro"),
            ("frank", "free"),
        ):
            await create_account(session, user, plan=plan)
        await add_member(session, org="acme", user="alice", role="admin")
        await add_member(session, org="acme", user="bob", role="write")
        await add_member(session, org="acme", user="carol", role="read")
        await add_member(session, org="globex", user="dave", role="admin")


def usage(
    request_id: str,
    *,
    user: str,
    started_at: datetime,
    bill_to: str | None = None,
    provider: str = "together",
    model: str = "org/model",
    custom_key: bool = False,
) -> dict:
    return {
        "request_id": request_id,
        "provider": provider,
        "user": user,
        "bill_to": bill_to,
        "model": model,
        "custom_key": custom_key,
        "started_at": started_at.isoformat().replace("+00:00", "Z"),
    }


async def ingest(client: httpx.AsyncClient, records: Iterable[dict]) -> None:
    """POST records to the real ingest route (service-token client); every one must be accepted."""
    records = list(records)
    for start in range(0, len(records), 5_000):
        response = await client.post("/internal/v1/usage", json={"records": records[start : start + 5_000]})
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == [], response.json()["rejected"][:3]


async def insert_usage(db: Database, rows: Iterable[dict]) -> None:
    """Store usage rows as they are after ingest and pricing, for the read views.

    ``rows`` hold ``request_id, user, started_at`` and optionally ``billing_account`` (default the
    user), ``provider``, ``model``, ``status`` (default ``pending``, ``custom_key`` when
    ``custom_key``), ``cost`` (for priced rows), ``estimate`` (default 0). No ledger posting is
    made: use ``ingest`` and ``price`` when money must move.
    """
    values = []
    for row in rows:
        custom_key = row.get("custom_key", False)
        status = row.get("status", "custom_key" if custom_key else "pending")
        started_at = row["started_at"]
        values.append(
            {
                "provider_id": row.get("provider", "together"),
                "request_id": row["request_id"],
                "user_name": row["user"],
                "bill_to": row.get("billing_account"),
                "billing_account": row.get("billing_account", row["user"]),
                "bill_to_flagged": False,
                "model": row.get("model", "org/model"),
                "custom_key": custom_key,
                "started_at": started_at,
                "period": period_of(started_at),
                "content_hash": "0" * 32,
                "status": status,
                "estimate_nano_usd": row.get("estimate", 0),
                "cost_nano_usd": row.get("cost") if status == "priced" else None,
                "received_at": started_at,
                "attempts": 0,
            }
        )
    async with db.session_scope() as session:
        for start in range(0, len(values), 2_000):
            await session.execute(insert(UsageRecord), values[start : start + 2_000])


async def post(db: Database, *postings: Posting) -> None:
    """Post balanced ledger transactions through the real ledger service, in one transaction."""
    async with db.session_scope() as session:
        await ledger_service.post_many(session, list(postings))


def cost_posting(
    key: str, period: str, *, account: str, provider: str, credits: int = 0, payg: int = 0, memo: str | None = None
) -> Posting:
    """A request's cost as the ledger books it: credits and/or receivable debited, the provider's payable credited."""
    entries = [(codes.payable(provider, period), -(credits + payg))]
    if credits:
        entries.append((codes.credits(account, period), credits))
    if payg:
        entries.append((codes.receivable(account, period), payg))
    return Posting(
        kind=codes.REQUEST_COST,
        idempotency_key=key,
        period=period,
        entries=tuple(entries),
        account_name=account,
        provider_id=provider,
        memo=memo,
    )


def grant_posting(account: str, period: str, amount: int) -> Posting:
    return Posting(
        kind=codes.GRANT,
        idempotency_key=f"grant:{account}:{period}",
        period=period,
        account_name=account,
        entries=((codes.credits_expense(period), amount), (codes.credits(account, period), -amount)),
    )


async def record_ids(db: Database, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    keys = set(keys)
    async with db.session_scope() as session:
        rows = await session.execute(select(UsageRecord.provider_id, UsageRecord.request_id, UsageRecord.id))
        return {(p, r): i for p, r, i in rows if (p, r) in keys}


async def price(db: Database, costs: dict[str, int], *, provider: str = "together") -> None:
    """Settle ``{request_id: cost}`` as cost collection would: one transaction, real ledger postings."""
    ids = await record_ids(db, ((provider, request_id) for request_id in costs))
    async with db.session_scope() as session:
        await settle(session, priced=[PricedRequest(ids[(provider, r)], cost) for r, cost in costs.items()])


async def quarantine(db: Database, request_ids: Iterable[str], *, reason: str, provider: str = "together") -> None:
    request_ids = list(request_ids)
    ids = await record_ids(db, ((provider, r) for r in request_ids))
    async with db.session_scope() as session:
        await settle(session, quarantined=[QuarantinedRequest(ids[(provider, r)], reason) for r in request_ids])


async def mark_unpriced(db: Database, request_ids: Iterable[str], *, provider: str = "together") -> None:
    request_ids = list(request_ids)
    ids = await record_ids(db, ((provider, r) for r in request_ids))
    async with db.session_scope() as session:
        await settle(session, unpriced=[ids[(provider, r)] for r in request_ids])
