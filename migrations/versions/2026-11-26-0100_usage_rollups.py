"""Hourly and daily usage totals kept by triggers, so the usage series reads spans, not requests.

``usage_rollups`` holds, per billing account, span (a UTC hour or day), dimension (member,
provider, model) and key, the counts the usage series shows. On PostgreSQL three statement-level
triggers on ``usage_records`` append, in the writing transaction, the signed difference
each INSERT, UPDATE or DELETE makes (from its transition tables; an UPDATE that changes
no counted column, such as a lease, appends nothing). Appending never waits on another
writer, unlike an upsert of a shared total row. TRUNCATE empties the totals too. The
existing records are summed in as folded rows while the triggers already hold the table.
SQLite has no statement-level triggers; there the table stays empty (see the model).

Revision ID: 0005_usage_rollups
Revises: 0004_hot_update_fillfactor
Create Date: 2026-11-26 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_usage_rollups"
down_revision = "0004_hot_update_fillfactor"
branch_labels = None
depends_on = None

COLUMNS = (
    "billing_account, span, starts_at, dimension, key, "
    "requests, priced_requests, cost_nano_usd, pending_requests, custom_key_requests"
)


def signed(source: str, sign: str) -> str:
    """The counted measures of each row of ``source``, times ``sign``."""
    return f"""
        SELECT billing_account, date_trunc('hour', started_at, 'UTC') AS hour,
               date_trunc('day', started_at, 'UTC') AS day, user_name, provider_id, model,
               {sign} * (NOT custom_key)::int AS requests,
               {sign} * (status = 'priced')::int AS priced_requests,
               {sign} * coalesce(cost_nano_usd, 0) AS cost_nano_usd,
               {sign} * (status = 'pending')::int AS pending_requests,
               {sign} * custom_key::int AS custom_key_requests
        FROM {source}"""


def rollup(rows: str) -> str:
    """One row per (account, span, dimension, key) of ``rows`` whose sums are not all zero."""
    return f"""
        SELECT billing_account,
               CASE WHEN GROUPING(hour) = 0 THEN 'hour' ELSE 'day' END,
               CASE WHEN GROUPING(hour) = 0 THEN hour ELSE day END,
               CASE WHEN GROUPING(user_name) = 0 THEN 'member'
                    WHEN GROUPING(provider_id) = 0 THEN 'provider' ELSE 'model' END,
               CASE WHEN GROUPING(user_name) = 0 THEN user_name
                    WHEN GROUPING(provider_id) = 0 THEN provider_id ELSE model END,
               sum(requests), sum(priced_requests), sum(cost_nano_usd), sum(pending_requests), sum(custom_key_requests)
        FROM ({rows}) AS changes
        GROUP BY GROUPING SETS (
            (billing_account, hour, user_name), (billing_account, hour, provider_id), (billing_account, hour, model),
            (billing_account, day, user_name), (billing_account, day, provider_id), (billing_account, day, model))
        HAVING sum(requests) <> 0 OR sum(priced_requests) <> 0 OR sum(cost_nano_usd) <> 0
            OR sum(pending_requests) <> 0 OR sum(custom_key_requests) <> 0"""


def trigger_function(name: str, rows: str) -> str:
    return f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            INSERT INTO usage_rollups ({COLUMNS}, folded) SELECT *, false FROM ({rollup(rows)}) AS rolled;
            RETURN NULL;
        END
        $body$"""


FUNCTIONS = {
    "usage_rollups_on_insert": ("INSERT", "REFERENCING NEW TABLE AS new_rows", signed("new_rows", "1")),
    "usage_rollups_on_update": (
        "UPDATE",
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        signed("new_rows", "1") + " UNION ALL " + signed("old_rows", "-1"),
    ),
    "usage_rollups_on_delete": ("DELETE", "REFERENCING OLD TABLE AS old_rows", signed("old_rows", "-1")),
}


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("billing_account", sa.String(96), nullable=False),
        sa.Column("span", sa.String(4), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dimension", sa.String(8), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("priced_requests", sa.BigInteger(), nullable=False),
        sa.Column("cost_nano_usd", sa.BigInteger(), nullable=False),
        sa.Column("pending_requests", sa.BigInteger(), nullable=False),
        sa.Column("custom_key_requests", sa.BigInteger(), nullable=False),
        sa.Column("folded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_rollups")),
    )
    op.create_index(
        "ix_usage_rollups_series", "usage_rollups", ["billing_account", "span", "dimension", "starts_at", "key"]
    )
    if op.get_context().dialect.name != "postgresql":
        return
    for name, (event, referencing, rows) in FUNCTIONS.items():
        op.execute(trigger_function(name, rows))
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON usage_records {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )
    op.execute(
        "CREATE FUNCTION usage_rollups_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $body$ "
        "BEGIN DELETE FROM usage_rollups; RETURN NULL; END $body$"
    )
    op.execute(
        "CREATE TRIGGER usage_rollups_on_truncate AFTER TRUNCATE ON usage_records "
        "FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_on_truncate()"
    )
    op.execute(
        f"INSERT INTO usage_rollups ({COLUMNS}, folded) SELECT *, true FROM ({rollup(signed('usage_records', '1'))}) AS rolled"
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for name in [*FUNCTIONS, "usage_rollups_on_truncate"]:
            op.execute(f"DROP TRIGGER {name} ON usage_records")
            op.execute(f"DROP FUNCTION {name}()")
    op.drop_index("ix_usage_rollups_series", table_name="usage_rollups")
    op.drop_table("usage_rollups")
