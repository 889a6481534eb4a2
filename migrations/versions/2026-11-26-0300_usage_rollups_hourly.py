"""Usage totals: hours only, and member rows only for members of an org.

The triggers of migration 0005 appended six rows per key a statement touched (member,
provider and model, per hour and per day). For a batch of requests from many users that is
six totals rows per request, which doubled the cost of every insert into ``usage_records``
and of every cost collection. Now they append three at most:

- no daily rows: a day is the sum of its 24 hourly totals, summed when the series is read;
- no member row where the member is the billing account itself (a user paying for their own
  requests): that member's usage is the account's total less its other members', which
  the provider rows already hold. So a user's requests append two rows, an org member's three.

The series and ``metering verify`` read the totals in the same shape.

Revision ID: 0006_usage_rollups_hourly
Revises: 0005_usage_rollups
Create Date: 2026-11-26 03:00:00
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0006_usage_rollups_hourly"
down_revision = "0005_usage_rollups"
branch_labels = None
depends_on = None

COLUMNS = (
    "billing_account, span, starts_at, dimension, key, "
    "requests, priced_requests, cost_nano_usd, pending_requests, custom_key_requests"
)


def signed(source: str, sign: str) -> str:
    """The counted measures of each row of ``source``, times ``sign``; ``member`` is NULL for the payer itself."""
    return f"""
        SELECT billing_account, date_trunc('hour', started_at, 'UTC') AS hour,
               CASE WHEN user_name <> billing_account THEN user_name END AS member, provider_id, model,
               {sign} * (NOT custom_key)::int AS requests,
               {sign} * (status = 'priced')::int AS priced_requests,
               {sign} * coalesce(cost_nano_usd, 0) AS cost_nano_usd,
               {sign} * (status = 'pending')::int AS pending_requests,
               {sign} * custom_key::int AS custom_key_requests
        FROM {source}"""


def rollup(rows: str) -> str:
    """One row per (account, hour, dimension, key) of ``rows`` whose sums are not all zero."""
    return f"""
        SELECT billing_account, 'hour', hour,
               CASE WHEN GROUPING(member) = 0 THEN 'member'
                    WHEN GROUPING(provider_id) = 0 THEN 'provider' ELSE 'model' END,
               CASE WHEN GROUPING(member) = 0 THEN member
                    WHEN GROUPING(provider_id) = 0 THEN provider_id ELSE model END,
               sum(requests), sum(priced_requests), sum(cost_nano_usd), sum(pending_requests), sum(custom_key_requests)
        FROM ({rows}) AS changes
        GROUP BY GROUPING SETS ((billing_account, hour, member), (billing_account, hour, provider_id),
                                (billing_account, hour, model))
        HAVING (GROUPING(member) = 1 OR member IS NOT NULL)
           AND (sum(requests) <> 0 OR sum(priced_requests) <> 0 OR sum(cost_nano_usd) <> 0
                OR sum(pending_requests) <> 0 OR sum(custom_key_requests) <> 0)"""


def trigger_function(name: str, rows: str) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            INSERT INTO usage_rollups ({COLUMNS}, folded) SELECT *, false FROM ({rollup(rows)}) AS rolled;
            RETURN NULL;
        END
        $body$"""


ROWS = {
    "usage_rollups_on_insert": signed("new_rows", "1"),
    "usage_rollups_on_update": signed("new_rows", "1") + " UNION ALL " + signed("old_rows", "-1"),
    "usage_rollups_on_delete": signed("old_rows", "-1"),
}


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    _hold_writers()
    for name, rows in ROWS.items():
        op.execute(trigger_function(name, rows))
    op.execute("DELETE FROM usage_rollups WHERE span = 'day' OR (dimension = 'member' AND key = billing_account)")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    _hold_writers()
    previous = _revision_0005()
    for name, (_event, _referencing, rows) in previous.FUNCTIONS.items():
        op.execute(previous.trigger_function(name, rows).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    # The daily and self-member rows are gone: the totals are summed again from the records.
    op.execute("DELETE FROM usage_rollups")
    op.execute(
        f"INSERT INTO usage_rollups ({previous.COLUMNS}, folded) "
        f"SELECT *, true FROM ({previous.rollup(previous.signed('usage_records', '1'))}) AS rolled"
    )


def _hold_writers() -> None:
    """Until this migration commits, no statement writes records or totals (the fold job included):
    a writer inside an old trigger function would append rows in the old shape after the clean-up."""
    op.execute("LOCK TABLE usage_records, usage_rollups IN SHARE MODE")


def _revision_0005():
    """Migration 0005 as a module, for its trigger definitions (its file name is not importable)."""
    path = Path(__file__).with_name("2026-11-26-0100_usage_rollups.py")
    spec = importlib.util.spec_from_file_location("usage_rollups_0005", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
