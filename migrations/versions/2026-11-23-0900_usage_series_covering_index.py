"""Usage series: the (billing_account, started_at) index also carries what the series counts.

On PostgreSQL the index INCLUDEs the group and measure columns, so a bucket of the usage
time series is an index-only scan instead of a heap fetch per request. SQLite has no
INCLUDE; its index stays as it was.

Revision ID: 0003_usage_series_cover
Revises: 0002_invoicing
Create Date: 2026-11-23 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0003_usage_series_cover"
down_revision = "0002_invoicing"
branch_labels = None
depends_on = None

INDEX = "ix_usage_records_billing_time"
COVERED = ["user_name", "provider_id", "model", "status", "custom_key", "cost_nano_usd"]


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name="usage_records")
    op.create_index(INDEX, "usage_records", ["billing_account", "started_at"], postgresql_include=COVERED)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name="usage_records")
    op.create_index(INDEX, "usage_records", ["billing_account", "started_at"])
