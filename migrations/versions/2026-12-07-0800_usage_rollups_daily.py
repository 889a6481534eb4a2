"""Daily usage totals: the fold job adds what it folds to each key's ``day`` row.

A daily series of a month summed the hourly totals: for an org of a few hundred members,
some two hundred thousand member-hours, read on every request of its usage page. The fold
job now also keeps one ``day`` row per key and UTC day, the sum of that day's folded hourly
rows, so a day reads one row plus the hourly differences not folded yet (a minute's worth,
found through ``ix_usage_rollups_unfolded``, which the fold reads too instead of the table).
Hourly series read the hourly rows as before. The day rows of the totals that exist are
summed in here, from the folded hourly rows, while writers wait.

Revision ID: 0015_usage_rollups_daily
Revises: 0014_monthly_partitions
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_usage_rollups_daily"
down_revision = "0014_monthly_partitions"
branch_labels = None
depends_on = None

MEASURES = ("requests", "priced_requests", "cost_nano_usd", "pending_requests", "custom_key_requests")
DAY = "date_bin(interval '1 day', starts_at, timestamptz '2000-01-01 00:00:00+00')"
# Each key's day row: the sum of that day's folded hourly rows (what the fold keeps it equal to).
DAY_ROWS = f"""
    INSERT INTO usage_rollups (billing_account, span, starts_at, dimension, key, {", ".join(MEASURES)}, folded)
    SELECT billing_account, 'day', {DAY}, dimension, key, {", ".join(f"sum({m})" for m in MEASURES)}, true
    FROM usage_rollups WHERE span = 'hour' AND folded
    GROUP BY billing_account, {DAY}, dimension, key
    HAVING {" OR ".join(f"sum({m}) <> 0" for m in MEASURES)}"""


def upgrade() -> None:
    op.create_index(
        "ix_usage_rollups_unfolded",
        "usage_rollups",
        ["billing_account", "dimension", "starts_at"],
        postgresql_where=sa.text("NOT folded"),
        sqlite_where=sa.text("NOT folded"),
    )
    if op.get_context().dialect.name != "postgresql":
        return  # SQLite keeps no totals
    op.execute("LOCK TABLE usage_records, usage_rollups IN SHARE MODE")
    op.execute(DAY_ROWS)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("LOCK TABLE usage_records, usage_rollups IN SHARE MODE")
        op.execute("DELETE FROM usage_rollups WHERE span = 'day'")
    op.drop_index("ix_usage_rollups_unfolded", table_name="usage_rollups")
